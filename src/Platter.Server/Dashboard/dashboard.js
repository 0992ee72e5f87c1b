// Platter dashboard: reads the management API every 2 s and draws the store, volumes, snapshots and clients.
// Rates and latencies come from the difference between two readings of /v1/stats. Changes (create, snapshot,
// clone, rollback, delete) need the API token on TCP; it is kept in this tab's sessionStorage only.
"use strict";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("platter-token") || "";
let previousStats = null;
let rates = new Map();

function formatBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(n < 10 ? 2 : n < 100 ? 1 : 0)) + " " + units[i];
}

function formatRate(bytesPerSecond, opsPerSecond) {
  if (bytesPerSecond === undefined) return "–";
  return formatBytes(bytesPerSecond) + "/s · " + opsPerSecond.toFixed(0) + " IOPS";
}

function formatLatency(seconds) {
  if (seconds === undefined || seconds === null) return "–";
  if (seconds < 1e-3) return (seconds * 1e6).toFixed(0) + " µs";
  if (seconds < 1) return (seconds * 1e3).toFixed(1) + " ms";
  return seconds.toFixed(2) + " s";
}

function formatAge(iso) {
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return Math.floor(seconds) + " s ago";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
  if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
  return Math.floor(seconds / 86400) + " d ago";
}

// "20G", "512M", "1.5T", "4096" -> bytes (powers of 1024, as the CLI reads them).
function parseSize(text) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*$/i.exec(text);
  if (!m) return null;
  const power = "BKMGTP".indexOf((m[2] || "B").toUpperCase());
  return Math.round(parseFloat(m[1]) * Math.pow(1024, power));
}

async function api(method, path, body) {
  const headers = {};
  if (token) headers["Authorization"] = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const message = data && data.message ? data.message : response.status + " " + response.statusText;
    throw new Error(response.status === 401 ? "the API token is missing or wrong: " + message : message);
  }
  return data;
}

function setStatus(text, error) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", !!error);
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function button(parent, label, className, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  if (className) b.className = className;
  b.disabled = !token;
  b.title = token ? "" : "enter the API token to make changes";
  b.addEventListener("click", action);
  parent.appendChild(b);
  return b;
}

function replaceRows(tbody, rows, columns, empty) {
  tbody.replaceChildren(...rows);
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(tr, empty, "muted");
    td.colSpan = columns;
    tbody.appendChild(tr);
  }
}

// A modal for every question: a name to type, a destructive action to confirm, an optional checkbox.
function ask({ title, text, input, placeholder, check, ok, danger }) {
  const dialog = $("dialog");
  $("dialog-title").textContent = title;
  $("dialog-text").textContent = text || "";
  const field = $("dialog-input");
  field.classList.toggle("hidden", input === undefined);
  field.value = input || "";
  field.placeholder = placeholder || "";
  field.required = input !== undefined;
  $("dialog-check-label").classList.toggle("hidden", !check);
  $("dialog-check").checked = false;
  $("dialog-check-text").textContent = check || "";
  const okButton = $("dialog-ok");
  okButton.textContent = ok || "OK";
  okButton.className = danger ? "danger" : "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok" ? { value: field.value.trim(), checked: $("dialog-check").checked } : null);
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    if (input !== undefined) field.focus();
  });
}

async function act(description, action) {
  try {
    setStatus(description + "…");
    await action();
    setStatus(description + ": done");
  } catch (e) {
    setStatus(description + ": " + e.message, true);
  }
  await refresh();
}

function computeRates(stats) {
  const next = new Map();
  const byName = new Map(stats.volumes.map((v) => [v.name, v]));
  if (previousStats) {
    const seconds = (Date.parse(stats.timeUtc) - Date.parse(previousStats.timeUtc)) / 1000;
    for (const old of previousStats.volumes) {
      const now = byName.get(old.name);
      if (!now || seconds <= 0) continue;
      const reads = now.reads - old.reads, writes = now.writes - old.writes;
      next.set(old.name, {
        readBytes: (now.readBytes - old.readBytes) / seconds, readOps: reads / seconds,
        writeBytes: (now.writtenBytes - old.writtenBytes) / seconds, writeOps: writes / seconds,
        readLatency: reads > 0 ? (now.readSeconds - old.readSeconds) / reads : null,
        writeLatency: writes > 0 ? (now.writeSeconds - old.writeSeconds) / writes : null,
      });
    }
  }
  previousStats = stats;
  rates = next;
}

function drawVolumes(volumes, space, clients) {
  const rows = volumes.map((v) => {
    const tr = document.createElement("tr");
    tr.dataset.volume = v.name;
    const s = space.get(v.name) || {};
    const r = rates.get(v.name);
    cell(tr, v.name, "name");
    cell(tr, formatBytes(v.sizeBytes), "num");
    cell(tr, formatBytes(s.allocatedBytes ?? v.allocatedBytes), "num");
    cell(tr, formatBytes(s.uniqueBytes), "num");
    cell(tr, formatBytes(s.sharedBytes), "num");
    cell(tr, r ? formatRate(r.readBytes, r.readOps) : "–", "num");
    cell(tr, r ? formatRate(r.writeBytes, r.writeOps) : "–", "num");
    cell(tr, r ? formatLatency(r.readLatency) : "–", "num");
    cell(tr, r ? formatLatency(r.writeLatency) : "–", "num");
    cell(tr, String(clients.get(v.name) || 0), "num");
    cell(tr, v.origin || "", "muted");
    const actions = cell(tr, "", "actions");
    button(actions, "Snapshot", "secondary", () => snapshotVolume(v.name));
    button(actions, "Delete", "danger", () => deleteVolume(v));
    return tr;
  });
  replaceRows($("volume-rows"), rows, 12, "no volumes yet");
}

function drawSnapshots(snapshots, space) {
  const rows = snapshots.map((s) => {
    const tr = document.createElement("tr");
    tr.dataset.snapshot = s.fullName;
    const u = space.get(s.fullName) || {};
    cell(tr, s.fullName, "name");
    cell(tr, formatBytes(s.sizeBytes), "num");
    cell(tr, formatBytes(u.allocatedBytes ?? s.allocatedBytes), "num");
    cell(tr, formatBytes(u.uniqueBytes), "num");
    cell(tr, formatBytes(u.sharedBytes), "num");
    cell(tr, formatAge(s.createdUtc));
    cell(tr, s.clones.join(", "), "muted");
    const actions = cell(tr, "", "actions");
    button(actions, "Clone", "secondary", () => cloneSnapshot(s));
    button(actions, "Rollback", "danger", () => rollbackSnapshot(s));
    button(actions, "Delete", "danger", () => deleteSnapshot(s));
    return tr;
  });
  replaceRows($("snapshot-rows"), rows, 8, "no snapshots");
}

function drawClients(stats) {
  const rows = stats.connections.map((c) => {
    const tr = document.createElement("tr");
    cell(tr, c.peer);
    cell(tr, c.export || "(handshake)");
    cell(tr, formatAge(c.connectedUtc));
    return tr;
  });
  replaceRows($("client-rows"), rows, 3, "no client connected");
  $("client-note").textContent = stats.nbdConnectionsTotal + " connection(s) since start, " + stats.nbdHandshakesRefused +
    " refused in the handshake" + (stats.metricsEnabled ? "" : " · I/O rates are off (server started with --no-metrics)");
}

async function refresh() {
  try {
    const [health, usage, volumes, snapshots, space, stats] = await Promise.all([
      api("GET", "/v1/health"), api("GET", "/v1/usage"), api("GET", "/v1/volumes"), api("GET", "/v1/snapshots"),
      api("GET", "/v1/space"), api("GET", "/v1/stats"),
    ]);
    $("server").textContent = "Platter " + health.version + (health.nbdTcp ? " · NBD " + health.nbdTcp : "") +
      (health.nbdSocket ? " · unix:" + health.nbdSocket : "") + (health.nbdReadOnly ? " · read-only" : "");
    const badge = $("health");
    badge.textContent = health.status;
    badge.className = "badge " + (health.status === "ok" ? "ok" : "bad");
    $("store-path").textContent = health.storeDirectory;
    $("used").textContent = formatBytes(usage.usedBytes);
    $("free").textContent = formatBytes(usage.freeBytes);
    $("datafile").textContent = formatBytes(usage.dataFileBytes);
    $("provisioned").textContent = formatBytes(usage.provisionedBytes);
    $("volume-count").textContent = String(usage.volumeCount);
    const capacity = usage.usedBytes + usage.freeBytes;
    $("used-bar").style.width = (capacity > 0 ? (100 * usage.usedBytes) / capacity : 0).toFixed(1) + "%";

    computeRates(stats);
    const spaceByName = new Map(space.entries.map((e) => [e.name, e]));
    const clients = new Map();
    for (const c of stats.connections) {
      if (c.export) clients.set(c.export, (clients.get(c.export) || 0) + 1);
    }
    drawVolumes(volumes.volumes, spaceByName, clients);
    drawSnapshots(snapshots.snapshots, spaceByName);
    drawClients(stats);
    document.querySelectorAll(".needs-token button, .needs-token input").forEach((e) => { e.disabled = !token; });
    if (!$("status").classList.contains("error") && !$("status").textContent.endsWith("…"))
      setStatus("updated " + new Date().toLocaleTimeString() + (token ? "" : " · read-only: enter the API token to make changes"));
  } catch (e) {
    $("health").textContent = "unreachable";
    $("health").className = "badge bad";
    setStatus("cannot reach the server: " + e.message, true);
  }
}

async function snapshotVolume(volume) {
  const answer = await ask({ title: "Snapshot " + volume, text: "Name of the new snapshot:", input: "", placeholder: "e.g. before-upgrade", ok: "Take snapshot" });
  if (!answer || !answer.value) return;
  await act("snapshot " + volume + "@" + answer.value,
    () => api("POST", "/v1/volumes/" + encodeURIComponent(volume) + "/snapshots", { name: answer.value }));
}

async function deleteVolume(v) {
  const recursive = v.snapshotCount > 0;
  const answer = await ask({
    title: "Delete volume " + v.name + "?",
    text: "Its data is gone for good." + (recursive ? " It has " + v.snapshotCount + " snapshot(s)." : "") + " Type the volume's name to confirm:",
    input: "", placeholder: v.name, check: recursive ? "also delete its snapshots" : undefined, ok: "Delete", danger: true,
  });
  if (!answer) return;
  if (answer.value !== v.name) { setStatus("not deleted: the name typed does not match", true); return; }
  await act("delete " + v.name,
    () => api("DELETE", "/v1/volumes/" + encodeURIComponent(v.name) + (answer.checked ? "?recursive=true" : "")));
}

async function cloneSnapshot(s) {
  const answer = await ask({ title: "Clone " + s.fullName, text: "Name of the new volume:", input: "", placeholder: "e.g. test1", ok: "Clone" });
  if (!answer || !answer.value) return;
  await act("clone " + s.fullName + " to " + answer.value, () => api("POST",
    "/v1/volumes/" + encodeURIComponent(s.volume) + "/snapshots/" + encodeURIComponent(s.name) + "/clone", { newName: answer.value }));
}

async function rollbackSnapshot(s) {
  const answer = await ask({
    title: "Roll " + s.volume + " back to " + s.name + "?",
    text: "Everything written to " + s.volume + " since this snapshot is discarded, and connected clients see the old content at once: stop the VM first.",
    check: "also delete newer snapshots (needed when there are any)", ok: "Roll back", danger: true,
  });
  if (!answer) return;
  await act("rollback " + s.fullName, () => api("POST",
    "/v1/volumes/" + encodeURIComponent(s.volume) + "/snapshots/" + encodeURIComponent(s.name) + "/rollback" + (answer.checked ? "?recursive=true" : "")));
}

async function deleteSnapshot(s) {
  const answer = await ask({ title: "Delete snapshot " + s.fullName + "?", text: "The space only it holds is freed; this cannot be undone.", ok: "Delete", danger: true });
  if (!answer) return;
  await act("delete " + s.fullName, () => api("DELETE",
    "/v1/volumes/" + encodeURIComponent(s.volume) + "/snapshots/" + encodeURIComponent(s.name)));
}

$("create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("create-name").value.trim();
  const size = parseSize($("create-size").value);
  if (size === null || size <= 0) { setStatus("size must look like 512, 4K, 10M, 20G or 1T", true); return; }
  await act("create " + name, () => api("POST", "/v1/volumes", { name, sizeBytes: size }));
  $("create-name").value = "";
  $("create-size").value = "";
});

$("token").value = token;
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  if (token) sessionStorage.setItem("platter-token", token); else sessionStorage.removeItem("platter-token");
  setStatus("");
  refresh();
});

refresh();
setInterval(refresh, POLL_MS);
