// smsgw dashboard: the live phones grid (server-sent events from /ui/phones/events).
// The server sends a row's HTML when it changed ("phone") and the id of a removed
// phone ("gone"); EventSource reconnects by itself when a stream ends.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const grid = document.querySelector("table[data-stream]");
  if (!grid || !window.EventSource) return;
  const body = grid.tBodies[0];
  const source = new EventSource(grid.dataset.stream);
  source.addEventListener("phone", (e) => {
    const holder = document.createElement("tbody");
    holder.innerHTML = e.data;
    const row = holder.firstElementChild;
    if (!row) return;
    const old = document.getElementById(row.id);
    if (old) old.replaceWith(row); else body.append(row);
    grid.dataset.updated = String(Date.now());
  });
  source.addEventListener("gone", (e) => {
    const old = document.getElementById("phone-" + e.data);
    if (old) old.remove();
  });
  source.addEventListener("signed-out", () => {
    source.close();
    window.location.assign("/ui/sign-in");
  });
});
