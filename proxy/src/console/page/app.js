// The console page: calls /api/v1 with the session cookie and the CSRF
// token the server wrote into the page. Every value from the server is
// written with textContent, never as HTML.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const $ = (id) => document.getElementById(id);
let me = null;

async function api(method, path, body) {
  const init = { method, headers: { "X-CSRF-Token": csrf }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch("/api/v1/" + path, init);
  if (response.status === 401) {
    location.assign("/login");
    throw new Error("logged out");
  }
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) {
    throw new Error(data && data.error ? data.error.message : response.statusText);
  }
  return data;
}

function say(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function created(ms) {
  return new Date(ms).toISOString().slice(0, 16).replace("T", " ") + " UTC";
}

function expiry(k) {
  if (k.expires == null) return "Never";
  return (k.expired ? "Expired " : "") + created(k.expires);
}

function lastUsed(c) {
  return c.last_used ? `${created(c.last_used.at)} (${c.last_used.instance})` : "Never";
}

function sites(value) {
  return value === "all" ? "All" : value.join(", ");
}

function scopeOf(prefix) {
  const specific = document.querySelector(`input[name="${prefix}-scope"]:checked`).value === "specific";
  if (!specific) return "all";
  return $(prefix + "-sites").value.split(",").map((s) => s.trim()).filter(Boolean);
}

function levelOptions(select, current) {
  select.replaceChildren();
  for (const level of me.key_levels) {
    const option = document.createElement("option");
    option.value = level;
    option.textContent = level[0].toUpperCase() + level.slice(1);
    option.selected = level === current;
    select.appendChild(option);
  }
}

function confirmDelete(text) {
  return new Promise((resolve) => {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
    dialog.showModal();
    $("confirm-no").focus();
  });
}

function deleteButton(kind, record) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "danger";
  button.textContent = "Delete";
  button.setAttribute("aria-label", `Delete ${kind} ${record.name}`);
  button.dataset.name = record.name;
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    const word = kind === "token" ? "token" : "key";
    const ok = await confirmDelete(
      `Delete the ${word} "${record.name}" (${record.hint})? API calls using it will stop working immediately.`);
    if (!ok) return;
    try {
      await api("DELETE", `${word}s/${encodeURIComponent(record.name)}`);
      say(`Deleted the ${word} "${record.name}".`);
      await (kind === "token" ? loadTokens() : loadKeys());
    } catch (e) {
      say(e.message, true);
    }
  });
  return button;
}

async function loadTokens() {
  const body = $("token-list").tBodies[0];
  body.replaceChildren();
  const canView = me.permissions.includes("api_tokens:view");
  $("tokens-denied").hidden = canView;
  $("token-list").hidden = !canView;
  if (!canView) return;
  const { tokens } = await api("GET", "tokens");
  const canDelete = me.permissions.includes("api_tokens:delete");
  for (const t of tokens) {
    const row = body.insertRow();
    row.dataset.name = t.name;
    cell(row, t.name);
    cell(row, t.hint).className = "mono";
    cell(row, sites(t.sites));
    cell(row, created(t.created));
    cell(row, lastUsed(t));
    cell(row, t.owner || "operator");
    cell(row, t.description || "");
    const actions = cell(row, "");
    if (canDelete) actions.appendChild(deleteButton("token", t));
  }
  if (tokens.length === 0) cell(body.insertRow(), "No tokens yet.").colSpan = 8;
}

function editButton(key) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = "Edit";
  button.setAttribute("aria-label", `Edit key ${key.name}`);
  button.addEventListener("click", (event) => {
    event.stopPropagation();
    openUpdate(key);
  });
  return button;
}

function openUpdate(key) {
  const form = $("key-update");
  form.dataset.name = key.name;
  $("update-name").value = key.name;
  levelOptions($("update-level"), key.level);
  form.hidden = false;
  $("update-name").focus();
}

async function loadKeys() {
  const body = $("key-list").tBodies[0];
  body.replaceChildren();
  $("keys-scope").textContent = me.role === "admin"
    ? "As an admin you see and manage every key of your account."
    : `As ${me.role === "architect" ? "an" : "a"} ${me.role} user you see and manage the keys you created, at the levels ${me.key_levels.join(" or ")}.`;
  const { keys } = await api("GET", "keys");
  for (const k of keys) {
    const row = body.insertRow();
    row.dataset.name = k.name;
    row.addEventListener("click", () => openUpdate(k));
    cell(row, k.name);
    cell(row, k.hint).className = "mono";
    cell(row, k.level);
    cell(row, sites(k.sites));
    cell(row, created(k.created));
    cell(row, expiry(k)).className = k.expired ? "expired" : "";
    cell(row, lastUsed(k));
    cell(row, k.owner || "operator");
    const actions = cell(row, "");
    actions.appendChild(editButton(k));
    actions.appendChild(deleteButton("key", k));
  }
  if (keys.length === 0) cell(body.insertRow(), "No keys yet.").colSpan = 9;
}

function describe(e) {
  const changes = [];
  if (e.previous_name) changes.push(`renamed from "${e.previous_name}"`);
  if (e.previous_level) changes.push(`level ${e.previous_level} → ${e.level}`);
  if (!changes.length && e.level) changes.push(`level ${e.level}`);
  return changes.join("; ");
}

async function loadAudit() {
  const body = $("audit-list").tBodies[0];
  body.replaceChildren();
  const { events } = await api("GET", "audit");
  for (const e of events) {
    const row = body.insertRow();
    cell(row, created(e.at));
    cell(row, e.actor);
    cell(row, `${e.action} ${e.subject}`);
    cell(row, e.name);
    cell(row, e.hint).className = "mono";
    cell(row, describe(e));
  }
}

function show() {
  const screen = ["tokens", "keys", "audit"].includes(location.hash.slice(1)) ? location.hash.slice(1) : "tokens";
  for (const id of ["tokens", "keys", "audit"]) {
    $(id).hidden = id !== screen;
    $("nav-" + id).toggleAttribute("aria-current", id === screen);
  }
  say("");
  const load = { tokens: loadTokens, keys: loadKeys, audit: loadAudit }[screen];
  load().catch((e) => say(e.message, true));
}

function reveal(panel, input, secret) {
  input.value = secret;
  panel.hidden = false;
  input.focus();
  input.select();
}

function wirePanels() {
  for (const button of document.querySelectorAll(".panel .cancel")) {
    button.addEventListener("click", () => { button.closest(".panel").hidden = true; });
  }
  for (const button of document.querySelectorAll(".reveal .done")) {
    button.addEventListener("click", () => {
      const panel = button.closest(".reveal");
      panel.querySelector("input").value = "";
      panel.hidden = true;
    });
  }
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", async () => {
      const input = $(button.dataset.copy);
      try {
        await navigator.clipboard.writeText(input.value);
      } catch {
        input.select();
        document.execCommand("copy");
      }
      button.textContent = "Copied";
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    });
  }
  for (const prefix of ["token", "key"]) {
    for (const radio of document.querySelectorAll(`input[name="${prefix}-scope"]`)) {
      radio.addEventListener("change", () => {
        $(prefix + "-sites").disabled = scopeOf(prefix) === "all";
      });
    }
  }
}

function wireTokens() {
  $("new-token").hidden = !me.permissions.includes("api_tokens:create");
  $("new-token").addEventListener("click", () => {
    $("token-form").reset();
    $("token-sites").disabled = true;
    $("token-form").hidden = false;
    $("token-name").focus();
  });
  $("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const request = { name: $("token-name").value.trim(), sites: scopeOf("token") };
    const description = $("token-description").value.trim();
    if (description) request.description = description;
    try {
      const { token, secret } = await api("POST", "tokens", request);
      $("token-form").hidden = true;
      reveal($("token-reveal"), $("token-secret"), secret);
      say(`Created the token "${token.name}".`);
      await loadTokens();
    } catch (e) {
      say(e.message, true);
    }
  });
}

function wireKeys() {
  $("new-key").addEventListener("click", () => {
    $("key-form").reset();
    $("key-sites").disabled = true;
    levelOptions($("key-level"), me.key_levels[0]);
    $("key-form").hidden = false;
    $("key-name").focus();
  });
  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const request = { name: $("key-name").value.trim(), level: $("key-level").value, sites: scopeOf("key") };
    const description = $("key-description").value.trim();
    if (description) request.description = description;
    const days = $("key-expiry").value;
    if (days) request.expires = Date.now() + Number(days) * 86400000;
    try {
      const { key, secret } = await api("POST", "keys", request);
      $("key-form").hidden = true;
      reveal($("key-reveal"), $("key-secret"), secret);
      say(`Created the key "${key.name}" (${key.hint}).`);
      await loadKeys();
    } catch (e) {
      say(e.message, true);
    }
  });
  $("key-update").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = $("key-update");
    const change = { name: $("update-name").value.trim(), level: $("update-level").value };
    try {
      const { key } = await api("PATCH", `keys/${encodeURIComponent(form.dataset.name)}`, change);
      form.hidden = true;
      say(`Saved the key "${key.name}".`);
      await loadKeys();
    } catch (e) {
      say(e.message, true);
    }
  });
}

async function start() {
  me = await api("GET", "me");
  $("who").textContent = `${me.name} · ${me.role} · ${me.customer}`;
  $("nav-audit").hidden = me.role !== "admin";
  wirePanels();
  wireTokens();
  wireKeys();
  window.addEventListener("hashchange", show);
  show();
  document.body.dataset.ready = "true";
}

start().catch((e) => say(e.message, true));
