// The approvers' review page. Plain DOM, no HTML strings: everything from the API goes in as textContent.
// Values in a change are PHI: this script never logs them and never puts them in a URL.
"use strict";

const API = "/api/v1/changes";
const LISTS = ["awaiting_approval", "conflict", "failed"];
const STORE_KEY = "writeback.review.principal";
// Claim types as shared/caller_identity.py encode_easyauth_principal writes them (App Service's own names).
const ROLE_CLAIM = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role";
const OID_CLAIM = "http://schemas.microsoft.com/identity/claims/objectidentifier";
const SCOPE_CLAIM = "http://schemas.microsoft.com/identity/claims/scope";
// App Service Authentication's own endpoints
// (learn.microsoft.com/azure/app-service/configure-authentication-customize-sign-in-out).
const SIGN_IN = "/.auth/login/aad?post_login_redirect_uri=/review";
const ME = "/.auth/me";
const LOOPBACK = ["localhost", "127.0.0.1", "[::1]"].includes(location.hostname);

const $ = (id) => document.getElementById(id);
let selected = null;
const tokens = {};
let session = null; // this browser's entry of /.auth/me, when App Service Authentication signed it in

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

// A table row: strings become cells' text, nodes go into their cell as they are.
function tr(cells, attrs) {
  const row = el("tr", null, attrs);
  for (const cell of cells) {
    const td = el("td", cell instanceof Node ? null : cell);
    if (cell instanceof Node) td.append(cell);
    row.append(td);
  }
  return row;
}

// --- identity -------------------------------------------------------------------------------------------------

function encodePrincipal(app, user, roles) {
  const claims = [{ typ: "appid", val: app }];
  // A user acting through the app carries a delegated scope; without one the gateway takes the caller as the app.
  if (user) {
    claims.push({ typ: OID_CLAIM, val: user }, { typ: SCOPE_CLAIM, val: "user_impersonation" });
    claims.push({ typ: "name", val: user });
  }
  for (const role of roles) claims.push({ typ: ROLE_CLAIM, val: role });
  const doc = { auth_typ: "aad", name_typ: "name", role_typ: ROLE_CLAIM, claims: claims };
  const bytes = new TextEncoder().encode(JSON.stringify(doc));
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

// App Service Authentication answers /.auth/me itself: 200 with the signed-in person, 401 when signed out. Anything
// else (the app's 404) means it is not in front of the app: a local run, where the local sign-in panel applies.
async function appServiceSession() {
  let resp;
  try {
    resp = await fetch(ME, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
  } catch (e) {
    return { state: "absent" };
  }
  if (resp.status === 401) return { state: "signed-out" };
  if (!resp.ok) return { state: "absent" };
  const body = await resp.json().catch(() => null);
  const entry = Array.isArray(body) ? body[0] : null;
  return entry ? { state: "signed-in", entry: entry } : { state: "signed-out" };
}

function claimValues(entry, type) {
  return (entry.user_claims || []).filter((c) => c.typ === type).map((c) => c.val);
}

function signIn() {
  $("who").textContent = "Not signed in: going to the sign-in page…";
  location.assign(SIGN_IN);
}

function localIdentity() {
  try { return JSON.parse(sessionStorage.getItem(STORE_KEY) || "null"); } catch (e) { return null; }
}

function showIdentity() {
  if (session) {
    const name = claimValues(session, "name")[0] || session.user_id;
    const roles = claimValues(session, ROLE_CLAIM);
    $("who").textContent = `Signed in as ${name} (${session.user_id}) — roles: ${roles.join(", ") || "none"}`;
    $("signout-session").hidden = false;
    $("local-signin").hidden = true;
    return;
  }
  const id = localIdentity();
  $("who").textContent = id
    ? `Signed in locally as ${id.user || "(app only)"} via ${id.app} — roles: ${id.roles.join(", ") || "none"}`
    : "Not signed in locally: behind App Service Authentication, your session identifies you.";
  if (id) {
    $("signin-app").value = id.app;
    $("signin-user").value = id.user;
    $("signin-roles").value = id.roles.join(", ");
  }
}

// --- the API --------------------------------------------------------------------------------------------------

async function api(path, options) {
  const headers = { Accept: "application/json" };
  const id = localIdentity();
  if (id) headers["X-MS-CLIENT-PRINCIPAL"] = id.header;
  // Same-origin calls carry the page's origin: under the page's no-referrer policy a POST would say "Origin: null",
  // which App Service's check of cookie-authenticated POSTs could refuse (Azure/azure-functions-host#1602).
  const defaults = { credentials: "same-origin", cache: "no-store", referrerPolicy: "same-origin" };
  const init = Object.assign(defaults, options || {});
  if (init.body !== undefined) headers["Content-Type"] = "application/json";
  init.headers = headers;
  const resp = await fetch(path, init);
  // Signed out (a session that ended, or App Service Authentication without /.auth/me): sign in again.
  if (resp.status === 401 && (session || (!id && !LOOPBACK))) signIn();
  const body = await resp.json().catch(() => null);
  if (!resp.ok) {
    const p = body && typeof body === "object" ? body : {};
    const problem = { status: resp.status, title: p.title || `HTTP ${resp.status}`, detail: p.detail };
    problem.issues = p.issues;
    throw Object.assign(new Error(problem.title), problem);
  }
  return { status: resp.status, body: body };
}

function showProblem(err, target) {
  const box = target || $("error");
  box.replaceChildren(el("strong", err.title || err.message || "Something went wrong"));
  if (err.status) box.append(el("span", ` (${err.status})`));
  if (err.detail) box.append(el("p", err.detail));
  if (Array.isArray(err.issues) && err.issues.length) {
    const list = el("ul");
    for (const i of err.issues) list.append(el("li", [i.path, i.code, i.message].filter(Boolean).join(" — ")));
    box.append(list);
  }
  box.hidden = false;
}

function clearProblem() {
  $("error").replaceChildren();
  $("error").hidden = true;
}

// --- the lists ------------------------------------------------------------------------------------------------

function age(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (!isFinite(s)) return "";
  const [n, unit] = s < 90 ? [s, "s"] : s < 5400 ? [s / 60, "min"] : s < 172800 ? [s / 3600, "h"] : [s / 86400, "d"];
  return `${Math.round(n)} ${unit}`;
}

function when(iso) {
  const t = Date.parse(iso);
  return isFinite(t) ? new Date(t).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC") : iso;
}

function pathsOf(change) {
  const plan = change.plan || {};
  if (Array.isArray(plan.changedPaths)) return plan.changedPaths;
  return (plan.conflict && plan.conflict.overlap) || [];
}

function requester(change) {
  const by = change.requestedBy || {};
  return by.user ? `${by.user} via ${by.app}` : by.app || "";
}

function renderList(status, items, append) {
  const host = document.querySelector(`[data-list="${status}"]`);
  let tbody = host.querySelector("tbody");
  if (!append || !tbody) {
    host.replaceChildren();
    if (!items.length) return host.append(el("p", "Nothing here.", { class: "empty" }));
    const table = host.appendChild(el("table", null, { class: "changes" }));
    const head = table.createTHead().insertRow();
    for (const h of ["Change", "Resource", "Requested by", "Paths", "Age"]) head.append(el("th", h, { scope: "col" }));
    tbody = table.createTBody();
  }
  for (const c of items) {
    const open = el("button", c.changeId, { type: "button", class: "link", "aria-label": `Open change ${c.changeId}` });
    open.addEventListener("click", () => openChange(c.changeId));
    const cells = [open, c.resourceRef || c.resourceType, requester(c), pathsOf(c).join(", "), age(c.submittedAt)];
    tbody.append(tr(cells, { "data-change-id": c.changeId }));
  }
}

async function loadList(status, more) {
  const query = new URLSearchParams({ status: status, pageSize: "50" });
  if (more && tokens[status]) query.set("continuationToken", tokens[status]);
  const { body } = await api(`${API}?${query}`);
  tokens[status] = body.continuationToken || null;
  const items = (body.items || []).sort((a, b) => String(a.submittedAt).localeCompare(String(b.submittedAt)));
  renderList(status, items, more);
  const host = document.querySelector(`[data-list="${status}"]`);
  if (tokens[status]) {
    const btn = el("button", "Show more", { type: "button", class: "more" });
    btn.addEventListener("click", () => { btn.remove(); loadList(status, true).catch((e) => showProblem(e)); });
    host.append(btn);
  }
  const count = document.querySelector(`[data-count="${status}"]`);
  count.textContent = `(${host.querySelectorAll("tbody tr").length}${tokens[status] ? "+" : ""})`;
}

async function refresh() {
  clearProblem();
  const results = await Promise.allSettled(LISTS.map((s) => loadList(s, false)));
  const failed = results.find((r) => r.status === "rejected");
  if (failed) showProblem(failed.reason);
  if (selected) await openChange(selected, true);
}

// --- one change -----------------------------------------------------------------------------------------------

function emptyRow(text) {
  const row = tr([text]);
  row.cells[0].colSpan = 4;
  row.cells[0].className = "empty";
  return row;
}

const OLD_LABEL = { replace: "(replaced)", remove: "(removed)", add: "(added)" };

function decider(approval) {
  return approval.decidedByName ? `${approval.decidedByName} (${approval.decidedBy})` : approval.decidedBy;
}

function renderDetail(c) {
  const plan = c.plan || {};
  const approval = c.approval || {};
  $("detail-id").textContent = c.changeId;
  const facts = $("detail-facts");
  facts.replaceChildren();
  const rows = [
    ["Status", c.status], ["Resource", c.resourceRef || c.resourceType], ["Operation", c.operation],
    ["Target", c.target], ["Requested by", requester(c)],
    ["Submitted", when(c.submittedAt)], ["Updated", when(c.updatedAt)],
    ["Policy decision", plan.decision], ["Policy version", plan.policyVersion], ["Base version", plan.baseVersion],
    ["Current version", plan.currentVersion], ["Approval expires", approval.expiresAt && when(approval.expiresAt)],
    ["Approval", approval.decision && `${approval.decision} by ${decider(approval)} at ${when(approval.decidedAt)}`],
    ["Approver's comment", approval.comment],
  ];
  for (const [k, v] of rows) if (v) facts.append(el("dt", k), el("dd", v));

  $("detail-paths").replaceChildren(...pathsOf(c).map((p) => el("li", p)));
  const diff = $("detail-diff");
  diff.replaceChildren();
  for (const op of Array.isArray(plan.diff) ? plan.diff : []) {
    // The diff has no old values (replace and remove carry none): say what happened rather than guess.
    const old = OLD_LABEL[op.op] || (op.from ? `from ${op.from}` : "—");
    const value = "value" in op ? el("pre", JSON.stringify(op.value, null, 2)) : "—";
    diff.append(tr([op.path, op.op, old, value]));
  }
  if (!diff.children.length) diff.append(emptyRow("No diff in the plan."));

  const reasons = $("detail-reasons");
  reasons.replaceChildren();
  for (const r of Array.isArray(plan.reasons) ? plan.reasons : []) {
    reasons.append(tr([r.path, r.rule, r.code, r.message]));
  }
  if (!reasons.children.length) reasons.append(emptyRow("No policy reasons."));

  const problem = $("detail-problem");
  problem.hidden = true;
  if (c.error) showProblem(c.error, problem);
  $("decision-form").hidden = c.status !== "awaiting_approval";
  $("resolve-form").hidden = c.status !== "conflict";
  $("detail").hidden = false;
}

async function openChange(changeId, keepMessage) {
  selected = changeId;
  // A comment belongs to the change it was typed for: cleared now, when another is chosen, never after the fetch.
  if (changeId !== $("detail-id").textContent) $("decision-comment").value = "";
  if (!keepMessage) { clearProblem(); $("message").textContent = ""; }
  try {
    const { body } = await api(`${API}/${encodeURIComponent(changeId)}`);
    if (selected !== changeId) return;
    renderDetail(body);
    if (!keepMessage) $("detail-title").focus();
    for (const row of document.querySelectorAll("tr[data-change-id]")) {
      row.classList.toggle("selected", row.getAttribute("data-change-id") === changeId);
    }
  } catch (err) {
    showProblem(err);
  }
}

async function decide(decision) {
  clearProblem();
  $("message").textContent = "";
  const buttons = document.querySelectorAll("#decision-form button");
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const comment = $("decision-comment").value;
    const { status } = await api(`${API}/${encodeURIComponent(selected)}/approval`, {
      method: "POST",
      body: JSON.stringify({ decision: decision, comment: comment }),
    });
    $("decision-comment").value = "";
    await refresh();
    $("message").textContent = decision === "approve"
      ? `Approved (${status}): the change goes on to writing.`
      : `Rejected (${status}): nothing will be written.`;
  } catch (err) {
    showProblem(err);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

async function resolve(action) {
  clearProblem();
  $("message").textContent = "";
  try {
    const { status } = await api(`${API}/${encodeURIComponent(selected)}/resolve`, {
      method: "POST",
      body: JSON.stringify({ action: action }),
    });
    await refresh();
    $("message").textContent = action === "replan"
      ? `Re-planned (${status}): the change runs again on the current version, through the policy.`
      : `Discarded (${status}): nothing will be written.`;
  } catch (err) {
    showProblem(err);
  }
}

// --- wiring ---------------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", async () => {
  $("local-signin").open = LOOPBACK && !localIdentity();
  showIdentity();
  const me = await appServiceSession();
  if (me.state === "signed-out") return signIn();
  session = me.state === "signed-in" ? me.entry : null;
  showIdentity();
  $("signin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const app = $("signin-app").value.trim();
    const user = $("signin-user").value.trim();
    const roles = $("signin-roles").value.split(",").map((r) => r.trim()).filter(Boolean);
    const header = encodePrincipal(app, user, roles);
    sessionStorage.setItem(STORE_KEY, JSON.stringify({ app: app, user: user, roles: roles, header: header }));
    $("local-signin").open = false;
    showIdentity();
    refresh();
  });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(STORE_KEY);
    showIdentity();
    refresh();
  });
  $("refresh").addEventListener("click", () => refresh());
  $("decision-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const decision = event.submitter && event.submitter.value;
    if (decision === "approve" || decision === "reject") decide(decision);
  });
  $("resolve-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const action = event.submitter && event.submitter.value;
    if (action === "replan" || action === "discard") resolve(action);
  });
  refresh();
});
