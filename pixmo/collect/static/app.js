// pixmo collect: the recording page and the pointing page, over the app's HTTP API.
"use strict";

const $ = (id) => document.getElementById(id);
// EXIF orientation -> [swap axes, mirror x, mirror y], stored -> displayed (pixmo.points)
const EXIF = {1: [0, 0, 0], 2: [0, 1, 0], 3: [0, 1, 1], 4: [0, 0, 1],
              5: [1, 0, 0], 6: [1, 1, 0], 7: [1, 1, 1], 8: [1, 0, 1]};
let token = null;
let task = null;
let imageUrl = null;

function login() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    localStorage.setItem("pixmo-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);  // the token leaves the address bar
  }
  token = localStorage.getItem("pixmo-token");
}

async function api(path, options = {}) {
  const headers = Object.assign({Authorization: "Bearer " + token}, options.headers || {});
  const res = await fetch(path, Object.assign({}, options, {headers}));
  if (res.status >= 400) {
    let text = res.statusText;
    try { text = (await res.json()).error; } catch (e) { /* not JSON */ }
    throw new Error(text);
  }
  return res;
}

function say(text) { $("message").textContent = text || ""; }

async function showImage(img) {
  const name = task.image.slice("images/".length).split("/").map(encodeURIComponent).join("/");
  const blob = await (await api("/images/" + name)).blob();
  if (imageUrl) URL.revokeObjectURL(imageUrl);
  imageUrl = URL.createObjectURL(blob);
  img.src = imageUrl;
  await img.decode();
}

async function nextTask() {
  say("");
  $("caption").hidden = $("points").hidden = true;
  const res = await api("/api/task");
  if (res.status === 204) { task = null; say("Nothing left to do. Thank you!"); return; }
  task = await res.json();
  const p = task.progress;
  $("progress").textContent = `done ${p.done} · left ${p.left}`;
  if (task.kind === "caption") await Recorder.start();
  else await Pointer.start();
  document.body.dataset.task = task.task_id;
  document.body.dataset.kind = task.kind;
}

// ---------------------------------------------------------------- recording page
const Recorder = {
  media: null, chunks: [], blob: null, began: 0, tick: null,

  async start() {
    this.reset();
    $("min-speech").textContent = task.min_speech_s;
    await showImage($("caption-image"));
    $("caption").hidden = false;
    document.body.dataset.state = "ready";
  },

  reset() {
    this.blob = null;
    $("playback").hidden = true;
    $("transcript").hidden = $("redo").hidden = $("next-caption").hidden = true;
    $("submit-caption").disabled = true;
    $("record").disabled = false;
    $("timer").textContent = "0:00";
    $("timer").classList.remove("enough");
    document.body.dataset.state = "loading";
  },

  async toggle() {
    if (this.media && this.media.state === "recording") { this.media.stop(); return; }
    const stream = await navigator.mediaDevices.getUserMedia({audio: true});
    const type = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus"]
      .find((t) => MediaRecorder.isTypeSupported(t));
    this.media = new MediaRecorder(stream, type ? {mimeType: type} : {});
    this.chunks = [];
    this.media.ondataavailable = (e) => this.chunks.push(e.data);
    this.media.onstop = () => this.stopped(stream);
    this.began = performance.now();
    this.media.start(1000);
    $("record").textContent = "Stop (R)";
    document.body.dataset.state = "recording";
    this.tick = setInterval(() => this.showTime(), 250);
  },

  seconds() { return (performance.now() - this.began) / 1000; },

  showTime() {
    const s = Math.floor(this.seconds());
    $("timer").textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
    $("timer").classList.toggle("enough", s >= task.min_speech_s);
  },

  stopped(stream) {
    clearInterval(this.tick);
    stream.getTracks().forEach((t) => t.stop());
    this.blob = new Blob(this.chunks, {type: this.media.mimeType});
    const long = this.seconds() >= task.min_speech_s;
    $("playback").src = URL.createObjectURL(this.blob);
    $("playback").hidden = false;
    $("record").textContent = "Record again (R)";
    $("submit-caption").disabled = !long;
    say(long ? "" : `Too short: please speak for at least ${task.min_speech_s} s.`);
    document.body.dataset.state = long ? "recorded" : "short";
  },

  async submit() {
    if ($("submit-caption").disabled) return;
    $("submit-caption").disabled = $("record").disabled = true;
    const form = new FormData();
    form.append("task_id", task.task_id);
    form.append("audio", this.blob, "recording");
    try {
      await api("/api/caption", {method: "POST", body: form});
    } catch (e) { say(e.message); $("record").disabled = false; return; }
    document.body.dataset.state = "submitted";
    $("transcript").hidden = false;
    $("transcript-text").textContent = "Transcribing…";
    this.poll(task.task_id);
  },

  async poll(id) {
    const t = await (await api("/api/caption/" + id)).json();
    if (t.status === "pending" || t.status === "unknown") {
      setTimeout(() => this.poll(id), 1000);
      return;
    }
    // only a recording QC refused is redone; without a transcript the recording still counts
    $("transcript-text").textContent = t.status === "done" ? t.text
      : t.status === "off" ? "(no transcript on this server)"
      : t.redo ? `Not usable (${t.reason}): ${t.detail || ""}`
      : `(no transcript: ${t.reason}; your recording is kept)`;
    $("redo").hidden = !t.redo;
    $("next-caption").hidden = t.redo;
    document.body.dataset.state = t.redo ? "redo" : "transcribed";
  },
};

// ---------------------------------------------------------------- pointing page
const Pointer = {
  points: [],  // displayed fractions [0-1] of the image, in click order
  moved: false,

  async start() {
    this.points = [];
    const free = task.label == null;
    $("label-row").hidden = !free;
    $("label-input").value = free ? "" : task.label;
    $("points-title").textContent = free ? "Point to something and name it"
      : `Point to every: ${task.label}`;
    $("every").checked = false;
    await showImage($("points-image"));
    $("points").hidden = false;
    this.draw();
  },

  fraction(event) {
    const r = $("points-image").getBoundingClientRect();
    return [Math.min(1, Math.max(0, (event.clientX - r.left) / r.width)),
            Math.min(1, Math.max(0, (event.clientY - r.top) / r.height))];
  },

  stored([fx, fy]) {  // displayed fraction -> pixels of the image as stored
    const [swap, mx, my] = EXIF[task.orientation] || EXIF[1];
    let x = mx ? 1 - fx : fx;
    let y = my ? 1 - fy : fy;
    if (swap) [x, y] = [y, x];
    return {x: Math.round(x * task.width * 100) / 100, y: Math.round(y * task.height * 100) / 100};
  },

  draw() {
    const area = $("point-area");
    area.querySelectorAll(".marker").forEach((m) => m.remove());
    $("point-list").innerHTML = "";
    this.points.forEach(([fx, fy], i) => {
      const m = document.createElement("div");
      m.className = "marker";
      m.textContent = i + 1;
      m.style.left = `${fx * 100}%`;
      m.style.top = `${fy * 100}%`;
      m.onpointerdown = (e) => this.drag(e, i);
      area.appendChild(m);
      const p = this.stored([fx, fy]);
      const li = document.createElement("li");
      li.textContent = `x ${p.x.toFixed(0)}, y ${p.y.toFixed(0)}`;
      $("point-list").appendChild(li);
    });
    $("submit-points").disabled = !(this.points.length && $("every").checked
                                    && $("label-input").value.trim());
    document.body.dataset.points = this.points.length;
  },

  drag(e, i) {
    e.stopPropagation();
    e.preventDefault();
    const move = (ev) => { this.points[i] = this.fraction(ev); this.moved = true; this.draw(); };
    const up = () => {
      setTimeout(() => { this.moved = false; }, 0);  // after the click that ends the drag
      window.removeEventListener("pointermove", move);
      window.removeEventListener("pointerup", up);
    };
    window.addEventListener("pointermove", move);
    window.addEventListener("pointerup", up);
  },

  add(e) {
    if (this.moved) return;  // the click that ends a drag
    if (e.target.classList.contains("marker")) return;
    this.points.push(this.fraction(e));
    this.draw();
  },

  undo() { this.points.pop(); this.draw(); },

  async submit(absent) {
    if (!absent && $("submit-points").disabled) return;
    const label = $("label-input").value.trim();
    if (!label) { say("Name what you point at first."); return; }
    const body = {task_id: task.task_id, label, units: "pixels",
                  points: absent ? [] : this.points.map((p) => this.stored(p))};
    try {
      await api("/api/points", {method: "POST", body: JSON.stringify(body),
                                headers: {"Content-Type": "application/json"}});
    } catch (e) { say(e.message); return; }
    await nextTask();
  },
};

// ---------------------------------------------------------------- wiring
function keys(e) {
  if (!task || e.target.tagName === "INPUT" && e.target.type === "text" && e.key !== "Enter") {
    return;
  }
  const k = e.key.toLowerCase();
  if (task.kind === "caption") {
    if (k === "r" && !$("record").disabled) Recorder.toggle();
    else if (k === "enter" && !$("next-caption").hidden) nextTask();
    else if (k === "enter") Recorder.submit();
  } else {
    if (k === "u" || k === "backspace") Pointer.undo();
    else if (k === "n") Pointer.submit(true);
    else if (k === "e") { $("every").checked = !$("every").checked; Pointer.draw(); }
    else if (k === "enter") Pointer.submit(false);
  }
}

window.addEventListener("DOMContentLoaded", () => {
  login();
  if (!token) { say("Open the login link you were given."); return; }
  $("record").onclick = () => Recorder.toggle();
  $("submit-caption").onclick = () => Recorder.submit();
  $("redo").onclick = () => nextTask();
  $("next-caption").onclick = () => nextTask();
  $("point-area").onclick = (e) => Pointer.add(e);
  $("undo").onclick = () => Pointer.undo();
  $("absent").onclick = () => Pointer.submit(true);
  $("every").onchange = () => Pointer.draw();
  $("label-input").oninput = () => Pointer.draw();
  $("submit-points").onclick = () => Pointer.submit(false);
  document.addEventListener("keydown", keys);
  nextTask().catch((e) => say(e.message));
});
