// Seed Serve console. Text reaches the page only through textContent (never
// innerHTML): names of keys and tenants are shown, never interpreted.
"use strict";

const state = { me: null };
const ERRORS = {
  sso_failed: "Sign-in with your company account failed: try again.",
  no_tenant: "Your account is in no group this endpoint serves: ask your platform team.",
  no_sso: "This endpoint has no company sign-in configured: use an admin key.",
  idp_unavailable: "The identity provider cannot be reached: try again later.",
};

function $(id) { return document.getElementById(id); }

function notice(message) {
  const box = $("notice");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, options = {}) {
  const headers = { "Accept": "application/json" };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  if (options.method && options.method !== "GET") {
    headers["X-Seed-Serve-Console"] = "1";
    if (state.me) headers["X-CSRF-Token"] = state.me.csrf_token;
  }
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    credentials: "same-origin",
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error((data.error && data.error.message) || response.statusText);
    error.status = response.status;
    throw error;
  }
  return data;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  row.appendChild(td);
  return td;
}

function fill(tableId, items, columns) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren();
  for (const item of items) {
    const row = document.createElement("tr");
    for (const column of columns) {
      if (typeof column === "function") column(row, item);
      else cell(row, item[column]);
    }
    body.appendChild(row);
  }
}

function show(page) {
  for (const section of document.querySelectorAll("main > section")) {
    section.hidden = section.id !== `page-${page}`;
  }
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("current", link.dataset.page === page);
  }
}

// ------------------------------------------------------------------ sign-in

async function signInWithKey(event) {
  event.preventDefault();
  try {
    await api("/console/login/key", { method: "POST", body: { key: $("admin-key").value } });
    $("admin-key").value = "";
    await start();
  } catch (error) {
    notice(error.message);
  }
}

async function signOut() {
  try { await api("/console/logout", { method: "POST" }); } catch (error) { /* gone already */ }
  state.me = null;
  window.location.hash = "";
  await start();
}

// ------------------------------------------------------------------ pages

function keyActions(row, key) {
  const td = cell(row, "");
  if (key.state !== "active") return;
  for (const [label, action] of [["Rotate", "rotate"], ["Revoke", "revoke"]]) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.dataset.action = action;
    button.dataset.key = key.id;
    button.addEventListener("click", () => changeKey(action, key.id));
    td.appendChild(button);
  }
}

function showSecret(secret) {
  $("secret").textContent = secret;
  $("secret-box").hidden = false;
}

async function changeKey(action, id) {
  try {
    const answer = await api(`/console/api/keys/${action}`, { method: "POST", body: { id } });
    if (answer.secret) showSecret(answer.secret);
    notice(action === "revoke" ? "Key revoked: gateways refuse it within seconds." : "");
    await route();
  } catch (error) {
    notice(error.message);
  }
}

async function createKey(event) {
  event.preventDefault();
  try {
    const answer = await api("/console/api/keys", { method: "POST", body: { name: $("key-name").value } });
    $("key-name").value = "";
    showSecret(answer.secret);
    notice("");
    await loadKeys();
  } catch (error) {
    notice(error.message);
  }
}

async function loadKeys() {
  const data = await api("/console/api/keys");
  fill("keys-table", data.keys, ["name", "id", "state", "created", "expires", keyActions]);
}

function usageQuery(extra = {}) {
  const params = new URLSearchParams(extra);
  if (state.me.role === "admin") {
    if ($("usage-tenant").value) params.set("tenant", $("usage-tenant").value);
    if ($("usage-user").value) params.set("user", $("usage-user").value);
  }
  return params;
}

function drawChart(rows, since, until) {
  const canvas = $("usage-chart");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const days = [];
  for (let day = new Date(since + "T00:00:00Z"); day <= new Date(until + "T00:00:00Z"); day.setUTCDate(day.getUTCDate() + 1)) {
    days.push(day.toISOString().slice(0, 10));
  }
  const tokens = Object.fromEntries(days.map((day) => [day, 0]));
  for (const row of rows) tokens[row.day] = (tokens[row.day] || 0) + row.prompt_tokens + row.completion_tokens;
  const most = Math.max(1, ...Object.values(tokens));
  const left = 60, bottom = canvas.height - 30, width = (canvas.width - left - 10) / days.length;
  context.fillStyle = "#555";
  context.font = "12px sans-serif";
  context.fillText(`${most} tokens`, 4, 14);
  context.fillText(days[0], left, canvas.height - 10);
  context.fillText(days[days.length - 1], canvas.width - 80, canvas.height - 10);
  context.fillStyle = "#2f6fdb";
  days.forEach((day, index) => {
    const height = (bottom - 20) * tokens[day] / most;
    context.fillRect(left + index * width + 1, bottom - height, Math.max(1, width - 2), height);
  });
}

function rate(row, item) {
  cell(row, item.acceptance_rate === null ? "-" : `${(100 * item.acceptance_rate).toFixed(1)} %`);
}

async function loadUsage() {
  const tenantOnly = new URLSearchParams();
  if (state.me.role === "admin" && $("usage-tenant").value) tenantOnly.set("tenant", $("usage-tenant").value);
  const acceptance = await api(`/console/api/acceptance?${tenantOnly}`);
  fill("acceptance-table", acceptance.data, ["tenant", "language", "shown", "accepted", "dismissed", rate]);
  const data = await api(`/console/api/usage?${usageQuery()}`);
  drawChart(data.data, data.since, data.until);
  fill("usage-table", data.data, ["day", "tenant", "user", "task", "requests", "prompt_tokens", "completion_tokens", "errors", "rate_limited"]);
  $("usage-csv").hidden = state.me.role !== "admin";
  $("usage-csv").href = `/v1/admin/usage?${usageQuery({ format: "csv" })}`;
}

async function loadTenants() {
  const data = await api("/console/api/tenants");
  const holder = $("tenants");
  holder.replaceChildren();
  for (const tenant of data.tenants) {
    const title = document.createElement("h3");
    title.textContent = tenant.name;
    const limits = document.createElement("p");
    const pairs = Object.entries(tenant.limits).map(([name, value]) => `${name}: ${value}`);
    limits.textContent = `Limits: ${pairs.length ? pairs.join(", ") : "the defaults"}`;
    const table = document.createElement("table");
    const head = document.createElement("tr");
    for (const name of ["Name", "Owner", "Role", "State", "Expires", ""]) {
      const th = document.createElement("th");
      th.textContent = name;
      head.appendChild(th);
    }
    const thead = document.createElement("thead");
    thead.appendChild(head);
    const tbody = document.createElement("tbody");
    for (const key of tenant.keys) {
      const row = document.createElement("tr");
      for (const column of ["name", "owner", "role", "state", "expires"]) cell(row, key[column]);
      const td = cell(row, "");
      if (key.state === "active") {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = "Revoke";
        button.dataset.action = "revoke";
        button.addEventListener("click", () => changeKey("revoke", key.id));
        td.appendChild(button);
      }
      tbody.appendChild(row);
    }
    table.append(thead, tbody);
    holder.append(title, limits, table);
  }
}

async function loadEndpoint() {
  const [replicas, adapters] = await Promise.all([api("/console/api/replicas"), api("/console/api/adapters")]);
  $("routing").textContent = replicas.routing;
  $("queued").textContent = String(Object.values(replicas.queued).reduce((a, b) => a + b, 0));
  fill("replicas-table", replicas.replicas, ["id", "group", "model", "state", "running", "waiting"]);
  fill("adapters-table", adapters.adapters, ["name", "tenant", "base_model",
    (row, a) => cell(row, a.default_of.join(", ")), (row, a) => cell(row, a.loaded_on.join(", "))]);
}

const PAGES = { keys: loadKeys, usage: loadUsage, tenants: loadTenants, endpoint: loadEndpoint };

async function route() {
  let page = window.location.hash.slice(1) || "keys";
  if (!(page in PAGES) || (state.me.role !== "admin" && (page === "tenants" || page === "endpoint"))) page = "keys";
  show(page);
  try {
    await PAGES[page]();
  } catch (error) {
    if (error.status === 401) { state.me = null; await start(); return; }
    notice(error.message);
  }
}

async function start() {
  try {
    state.me = await api("/console/api/me");
  } catch (error) {
    state.me = null;
  }
  $("nav").hidden = !state.me;
  if (!state.me) {
    $("sso-sign-in").hidden = document.body.dataset.sso !== "1";
    show("sign-in");
    return;
  }
  $("who").textContent = `${state.me.user} (${state.me.tenant}${state.me.role === "admin" ? ", admin" : ""})`;
  for (const element of document.querySelectorAll("[data-admin]")) element.hidden = state.me.role !== "admin";
  await route();
}

document.addEventListener("DOMContentLoaded", () => {
  const error = new URLSearchParams(window.location.search).get("error");
  if (error) notice(ERRORS[error] || "Sign-in failed.");
  $("key-sign-in").addEventListener("submit", signInWithKey);
  $("new-key").addEventListener("submit", createKey);
  $("usage-filter").addEventListener("submit", (event) => { event.preventDefault(); loadUsage().catch((e) => notice(e.message)); });
  $("sign-out").addEventListener("click", signOut);
  $("copy-secret").addEventListener("click", () => navigator.clipboard.writeText($("secret").textContent).then(() => notice("Copied.")).catch(() => notice("Select the key and copy it.")));
  window.addEventListener("hashchange", () => { if (state.me) route(); });
  start();
});
