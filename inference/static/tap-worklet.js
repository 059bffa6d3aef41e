// Output tap: passes the played audio through and, while recording, reports each block with its context time.
class Tap extends AudioWorkletProcessor {
  constructor() { super(); this.record = false; this.port.onmessage = (e) => { this.record = e.data; }; }
  process(inputs, outputs) {
    const inp = inputs[0] && inputs[0][0];
    const out = outputs[0][0];
    let energy = 0;
    if (inp) { out.set(inp); for (let i = 0; i < inp.length; i++) energy += inp[i] * inp[i]; }
    this.port.postMessage({ t: currentTime, energy, n: out.length, samples: this.record && inp ? inp.slice(0) : null });
    return true;
  }
}
registerProcessor("tap", Tap);
