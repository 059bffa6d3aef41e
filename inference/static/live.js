// TurboSync live page: the avatar's frames and voice from the server, paced by the audio clock.
// Frame i and its 640 samples are scheduled on one AudioContext timeline (T0 + 0.04 i); a frame is drawn
// when the audio being heard reaches its time, so lips follow the voice by construction, and the page
// measures it: for every drawn frame, when it was shown and when its audio was heard (performance.now ms).
"use strict";
const RATE = 16000, FRAME_S = 0.04, BUFFER_S = 0.12, FRAME_MAGIC = 0x31465354, AUDIO_MAGIC = 0x31415354;
const LEVELS = ["full", "one_step", "tiny_decoder", "pass_through", "late", "idle"];
const $ = (id) => document.getElementById(id);
const ts = window.ts = {
  log: [], heardEnergy: 0, blocks: 0, recording: [], record: false, closed: null, ready: null, stats: null,
  reanchors: 0, catchups: 0, received: 0, micOn: false,
};
let ctx, ws, tap, T0 = null, frames = new Map(), shownIndex = -1, micStream = null, micNode = null, micSource = null;
let seq = 0, minAhead = Infinity, aheadSince = 0;
let pendingMic = [], pendingLen = 0;

function heardClock() {
  // (contextTime, performanceTime) of the sample now leaving the speakers; falls back to the render clock.
  const o = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : {};
  if (o && o.performanceTime > 0) return o;
  return { contextTime: ctx.currentTime - (ctx.outputLatency || 0) - (ctx.baseLatency || 0), performanceTime: performance.now() };
}

function onFrame(buf) {
  const dv = new DataView(buf);
  if (dv.getUint32(0, true) !== FRAME_MAGIC) return;
  const i = dv.getUint32(4, true), level = LEVELS[dv.getUint8(8)], n = dv.getUint16(10, true);
  const pcm = new Int16Array(buf.slice(20, 20 + 2 * n));
  const jpeg = new Blob([buf.slice(20 + 2 * n)], { type: "image/jpeg" });
  ts.received++;
  if (T0 === null || T0 + i * FRAME_S < ctx.currentTime + 0.005) {
    if (T0 !== null) ts.reanchors++;  // the frame came too late to play on time: start the timeline again
    T0 = ctx.currentTime + BUFFER_S - i * FRAME_S;
  }
  // Latency stays put: when every packet of the last second came more than 250 ms earlier than the buffer needs
  // (a restart after a stall left the timeline late), the timeline moves back by the surplus.
  const ahead = T0 + i * FRAME_S - ctx.currentTime;
  minAhead = Math.min(minAhead, ahead);
  if (ctx.currentTime - aheadSince > 1.0) {
    if (minAhead > BUFFER_S + 0.25) { T0 -= minAhead - BUFFER_S; ts.catchups++; }
    minAhead = Infinity; aheadSince = ctx.currentTime;
  }
  const ab = ctx.createBuffer(1, n, RATE), ch = ab.getChannelData(0);
  for (let k = 0; k < n; k++) ch[k] = pcm[k] / 32767;
  const src = ctx.createBufferSource();
  src.buffer = ab; src.connect(tap); src.start(T0 + i * FRAME_S);
  const entry = { i, level, bitmap: null, t0: T0 };
  frames.set(i, entry);
  createImageBitmap(jpeg).then((b) => { entry.bitmap = b; });
}

function draw(now) {
  requestAnimationFrame(draw);
  if (T0 === null || !ctx) return;
  const o = heardClock();
  const heardCtx = o.contextTime + (now - o.performanceTime) / 1000;
  const k = Math.floor((heardCtx - T0) / FRAME_S + 1e-6);
  const e = frames.get(k);
  if (k !== shownIndex && e && e.bitmap) {
    const c = $("view").getContext("2d");
    c.drawImage(e.bitmap, 0, 0, 256, 256);
    const heard = o.performanceTime + (e.t0 + k * FRAME_S - o.contextTime) * 1000;
    ts.log.push({ i: k, shown: now, heard, level: e.level });
    shownIndex = k;
  }
  for (const [j, f] of frames) if (j < k - 2) { if (f.bitmap) f.bitmap.close(); frames.delete(j); }
}

function updatePanel() {
  const now = performance.now(), recent = ts.log.filter((x) => x.shown > now - 1000);
  $("fps").textContent = `${recent.length} frames/s shown, ${ts.received} received`;
  if (recent.length) {
    const off = recent.reduce((a, x) => a + x.shown - x.heard, 0) / recent.length;
    $("offset").textContent = `${off.toFixed(1)} ms (over the last second)`;
  }
  const s = ts.stats;
  if (s) {
    const lv = Object.entries(s.levels).map(([k, v]) => `${k} ${v}`).join(", ");
    $("engine").textContent = `${s.fps} frames/s sent (${lv})`;
    $("latency").textContent = `${(s.latency_ms + 1000 * BUFFER_S).toFixed(0)} ms (engine + pacing ${s.latency_ms}, page buffer ${1000 * BUFFER_S})`;
    $("banner").textContent = s.behind ? "This machine cannot keep up at full quality: frames are degraded or replaced by the idle avatar to keep 25 fps." : "";
  }
  $("audio").textContent = ctx ? `${ctx.state}, ${ctx.sampleRate} Hz, ${ts.heardEnergy > 0 ? "playing" : "silent"}${ts.reanchors ? `, ${ts.reanchors} restarts` : ""}${ts.catchups ? `, ${ts.catchups} catch-ups` : ""}` : "-";
}

async function start() {
  $("start").disabled = true;
  ctx = new AudioContext({ sampleRate: RATE, latencyHint: "interactive" });
  await ctx.audioWorklet.addModule("/static/tap-worklet.js");
  await ctx.audioWorklet.addModule("/static/capture-worklet.js");
  tap = new AudioWorkletNode(ctx, "tap");
  tap.port.postMessage(ts.record);  // recording may have been asked for before the tap existed
  tap.connect(ctx.destination);
  tap.port.onmessage = (e) => {
    const d = e.data;
    ts.blocks++; ts.heardEnergy += d.energy;
    if (d.samples) {
      const o = heardClock();
      ts.recording.push({ perf: o.performanceTime + (d.t - o.contextTime) * 1000, samples: d.samples });
    }
  };
  await ctx.resume();
  connect();
  requestAnimationFrame(draw);
  setInterval(updatePanel, 250);
}

function connect() {
  ws = new WebSocket(`ws://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => ws.send(JSON.stringify({ type: "hello", sample_rate: RATE }));
  ws.onmessage = (m) => {
    if (typeof m.data !== "string") return onFrame(m.data);
    const d = JSON.parse(m.data);
    if (d.type === "ready") {
      ts.ready = d; ts.closed = null; T0 = null; frames.clear(); shownIndex = -1;
      $("closed").textContent = "";
      $("state").textContent = `session ${d.session}, source: ${d.source}`;
      if (d.source === "mic") { $("mic").disabled = false; if (!micStream) toggleMic(); }
    } else if (d.type === "stats") ts.stats = d;
  };
  ws.onclose = (e) => {
    ts.closed = { code: e.code, reason: e.reason };
    $("closed").textContent = `session closed (${e.code}) ${e.reason}`;
    $("mic").disabled = true;
    if (e.code === 1013) setTimeout(connect, 1000);  // all engines busy: try again
  };
}

function sendMic(block) {
  pendingMic.push(block); pendingLen += block.length;
  if (pendingLen < 320 || !ws || ws.readyState !== 1) return;  // 20 ms packets
  const buf = new ArrayBuffer(8 + 2 * pendingLen), dv = new DataView(buf);
  dv.setUint32(0, AUDIO_MAGIC, true); dv.setUint32(4, seq++, true);
  let o = 8;
  for (const b of pendingMic) for (let k = 0; k < b.length; k++, o += 2) dv.setInt16(o, Math.max(-1, Math.min(1, b[k])) * 32767, true);
  ws.send(buf);
  pendingMic = []; pendingLen = 0;
}

async function toggleMic() {
  if (micStream) {
    micStream.getTracks().forEach((t) => t.stop());
    micSource.disconnect(); micNode.port.onmessage = null; micNode.disconnect();
    micStream = null; ts.micOn = false;
    $("mic").textContent = "Start microphone";
    ws.send(JSON.stringify({ type: "mic", on: false }));
    return;
  }
  micStream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  const src = micSource = ctx.createMediaStreamSource(micStream);
  micNode = new AudioWorkletNode(ctx, "capture");
  micNode.port.onmessage = (e) => sendMic(e.data);
  src.connect(micNode);
  const mute = ctx.createGain();  // keeps the capture node pulled by the graph, silently
  mute.gain.value = 0; micNode.connect(mute); mute.connect(ctx.destination);
  ts.micOn = true;
  $("mic").textContent = "Stop microphone";
  ws.send(JSON.stringify({ type: "mic", on: true }));
}

$("start").onclick = start;
$("mic").onclick = toggleMic;
