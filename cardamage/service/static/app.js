// Upload page of the claim service: posts the form to /v1/assess and shows the answer.
// Plain DOM, text only through textContent (the answer holds file names typed by users).
"use strict";

const $ = (sel) => document.querySelector(sel);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function pct(share) { return (100 * share).toFixed(1) + " %"; }

function money(est, currency) {
  if (!est) return "not priced";
  return `${est.min.toFixed(0)} – ${est.max.toFixed(0)} ${currency}`;
}

function showProposal(s) {
  const box = $("#proposal");
  box.replaceChildren();
  box.className = s.decision;
  box.hidden = false;
  const title = { estimate: "Estimated repair cost", no_damage: "No damage found",
                  refer_to_handler: "A claims handler will review this claim" }[s.decision] || s.decision;
  box.append(el("h2", title), el("p", money(s.estimate, s.currency), "amount"),
             el("p", `Decided by rule “${s.rule}”: ${s.reason}`, "reason"));
  box.dataset.decision = s.decision;
  box.dataset.rule = s.rule;
}

function damageTable(instances) {
  const table = el("table", null, "damage");
  const head = el("tr");
  ["#", "Type", "Part", "Confidence", "Area", "Box (x, y, w, h)"].forEach((h) => head.append(el("th", h)));
  table.append(head);
  instances.forEach((d) => {
    const row = el("tr");
    [d.id, d.class, d.part || "–", d.confidence.toFixed(2), pct(d.area_share), d.bbox.join(", ")]
      .forEach((v) => row.append(el("td", v)));
    table.append(row);
  });
  return table;
}

function showPhoto(p) {
  const card = el("article", null, p.assessed ? "photo assessed" : "photo refused");
  card.append(el("h3", p.filename));
  if (!p.assessed) {
    card.append(el("p", "This photo could not be assessed:"));
    const list = el("ul", null, "problems");
    p.quality.problems.forEach((q) => list.append(el("li", q.message)));
    card.append(list);
    return card;
  }
  card.append(el("p", `${p.instance_count} damaged area(s), ${pct(p.damaged_share)} of the photo`));
  const img = el("img", null, "splash");
  img.alt = `Damage found on ${p.filename}`;
  img.src = p.splash_url;
  card.append(img);
  if (p.instances.length) card.append(damageTable(p.instances));
  return card;
}

function showError(body, status) {
  const err = (body && body.error) || { message: `HTTP ${status}` };
  const box = el("div", err.message, "error");
  (err.files || []).forEach((f) => box.append(el("p", `${f.filename}: ${f.message}`)));
  $("#photos-out").replaceChildren(box);
  $("#proposal").hidden = true;
}

async function submit(event) {
  event.preventDefault();
  const form = new FormData();
  const claim = $("#claim-id").value.trim();
  if (claim) form.append("claim_id", claim);
  for (const f of $("#photos").files) form.append("photos", f, f.name);
  $("#status").textContent = "Assessing…";
  $("#submit").disabled = true;
  try {
    const resp = await fetch("/v1/assess", { method: "POST", body: form });
    const body = await resp.json().catch(() => null);
    if (!resp.ok) { showError(body, resp.status); return; }
    showProposal(body.settlement);
    $("#photos-out").replaceChildren(...body.photos.map(showPhoto));
    $("#status").textContent = `Done (request ${body.request_id}).`;
  } catch (e) {
    showError(null, "network error");
  } finally {
    $("#submit").disabled = false;
    if ($("#status").textContent === "Assessing…") $("#status").textContent = "";
  }
}

$("#claim-form").addEventListener("submit", submit);
fetch("/version").then((r) => r.json()).then((v) => {
  $("#version").textContent = `service ${v.service}, model ${v.model.version}`;
}).catch(() => {});
