// The demo page: timings of /concurrent and /sequential, and the chat room.
async function timed(path) {
  const t0 = performance.now();
  const res = await fetch(path);
  const body = await res.json();
  return { path, server: body.elapsed_ms, browser: Math.round(performance.now() - t0) };
}

document.getElementById("run").addEventListener("click", async () => {
  const rows = document.getElementById("timings");
  rows.textContent = "";
  for (const path of ["/concurrent", "/sequential"]) {
    const t = await timed(path);
    const tr = document.createElement("tr");
    for (const v of [t.path, t.server + " ms", t.browser + " ms"]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    rows.appendChild(tr);
  }
});

const log = document.getElementById("log");
const scheme = location.protocol === "https:" ? "wss:" : "ws:";
const ws = new WebSocket(scheme + "//" + location.host + "/ws/chat/lobby");
ws.onmessage = (e) => {
  const line = document.createElement("div");
  line.textContent = e.data;
  log.appendChild(line);
  log.scrollTop = log.scrollHeight;
};
document.getElementById("chat").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = document.getElementById("msg");
  if (input.value) ws.send(input.value);
  input.value = "";
});
