// stagegate's live page: reads the board pushed as server-sent events from
// /api/events and steers through /api/*, with the token from the address's #token= or
// typed in. Text from the run goes in with textContent; only the charts, drawn by the
// server as SVG, go in as markup.
"use strict";

const $ = (id) => document.getElementById(id);
let token = "";

(function takeToken() {
  const m = /[#&]token=([^&]+)/.exec(location.hash);
  if (m) {
    token = decodeURIComponent(m[1]);
    sessionStorage.setItem("stagegate-token", token);
    history.replaceState(null, "", location.pathname);
  } else {
    token = sessionStorage.getItem("stagegate-token") || "";
  }
  $("token").value = token;
  $("token-form").addEventListener("submit", (e) => e.preventDefault());
  $("token").addEventListener("change", () => {
    token = $("token").value.trim();
    sessionStorage.setItem("stagegate-token", token);
  });
})();

function headers() {
  return token ? { Authorization: "Bearer " + token } : {};
}

function text(el, value) {
  el.textContent = value === null || value === undefined ? "–" : String(value);
}

function num(v, digits) {
  return typeof v === "number" ? v.toFixed(digits) : "–";
}

function rows(tbody, items, cells) {
  tbody.replaceChildren();
  for (const item of items) {
    const tr = document.createElement("tr");
    for (const [value, cls] of cells(item)) {
      const td = document.createElement("td");
      text(td, value);
      if (cls) td.className = cls;
      tr.append(td);
    }
    tbody.append(tr);
  }
}

function list(ul, items) {
  ul.replaceChildren(...items.map((t) => {
    const li = document.createElement("li");
    li.textContent = t;
    return li;
  }));
}

function render(s) {
  text($("scenario"), s.scenario);
  const st = s.stage;
  text($("stage-line"), st ? `stage ${st.index + 1}/${s.stages.length}: ${st.name}` : (s.finished ? "finished" : "between stages"));
  text($("verdict"), s.verdict || "");
  $("verdict").className = { PROMOTE: "pass", ROLLBACK: "fail", INCONCLUSIVE: "inconclusive" }[s.verdict] || "";

  const tl = $("timeline");
  tl.replaceChildren(...s.stages.map((line) => {
    const d = document.createElement("div");
    d.className = [line.state, line.outcome || ""].join(" ");
    const running = st && s.stages[st.index] === line;
    const length = line.length_secs !== null
      ? ` · ran ${num(line.length_secs, 1)}s`
      : running && st.end_secs !== line.planned_secs ? ` · now ${st.end_secs}s` : "";
    d.textContent = `${line.name} (${num(line.planned_secs, 0)}s${length})`;
    d.title = [line.flags].concat(line.faults).join("\n");
    return d;
  }));
  const current = st ? s.stages[st.index] : null;
  text($("flags"), current ? `flags: ${current.flags || "defaults"}` : "");

  text($("fig-p50"), st ? num(st.p50_ms, 1) : "–");
  text($("fig-p99"), st ? num(st.p99_ms, 1) : "–");
  text($("fig-eps"), st ? st.errors_per_sec : "–");
  text($("fig-rate"), st ? st.ended_per_sec : "–");
  text($("fig-sent"), s.data.sent);
  text($("fig-acked"), s.data.acked);
  text($("fig-data"), `${s.data.lost} · ${s.data.duplicated} · ${s.data.corrupted}`);
  text($("fig-elapsed"), st ? `${st.elapsed_secs}s / ${st.end_secs}s` : "–");
  $("progress").style.width = st && st.end_secs ? `${Math.min(100, (100 * st.elapsed_secs) / st.end_secs)}%` : "0";

  // The charts are the server's own SVG.
  $("chart-latency").innerHTML = s.charts.latency || "";
  $("chart-traffic").innerHTML = s.charts.traffic || "";

  rows($("criteria"), s.criteria, (c) => [
    [c.stage], [c.criterion], [c.measured], [c.limit], [c.so_far ? `${c.outcome} so far` : c.outcome, c.outcome],
  ]);
  const faults = st ? st.faults : [];
  if (faults.length) {
    rows($("faults"), faults, (f) => [
      [`${f.kind} at ${f.at}`], [f.left_secs === null ? "to the stage's end" : `${num(f.left_secs, 0)}s left`],
      [f.by ? `by ${f.by}` : "planned", "muted"],
    ]);
  } else {
    rows($("faults"), [null], () => [["none", "muted"]]);
  }
  list($("notes"), s.notes);
  list($("reasons"), s.reasons);

  const steer = s.steering;
  $("steer-off").hidden = steer.enabled;
  $("steer-on").hidden = !steer.enabled;
  if (steer.enabled) {
    list($("audit"), steer.audit.slice().reverse().map((a) => `${a.at.slice(11, 19)} ${a.token} ${a.action}: ${a.result} (${a.message})`));
    for (const b of ["hold", "advance", "abort", "start-fault"]) $(b).disabled = s.finished || !!steer.aborted;
  }
}

async function act(path, body) {
  $("result").textContent = "…";
  try {
    const r = await fetch(path, {
      method: "POST",
      headers: Object.assign({ "Content-Type": "application/json" }, headers()),
      body: JSON.stringify(body || {}),
    });
    const answer = await r.json();
    $("result").textContent = `${answer.result}: ${answer.message}`;
    $("result").className = answer.result === "ok" ? "pass" : "fail";
  } catch (e) {
    $("result").textContent = `not sent: ${e.message}`;
    $("result").className = "fail";
  }
}

$("hold").addEventListener("click", () => act("/api/hold", { for: $("hold-for").value }));
$("advance").addEventListener("click", () => act("/api/advance"));
$("abort").addEventListener("click", () => {
  if (confirm("Abort the run? Faults are lifted, everything stops, the report is written.")) act("/api/abort");
});
$("start-fault").addEventListener("click", () => {
  let fault;
  try {
    fault = JSON.parse($("fault").value);
  } catch (e) {
    $("result").textContent = `the fault is not JSON: ${e.message}`;
    return;
  }
  act("/api/faults", fault);
});

// Server-sent events read through fetch, so the token can travel in a header.
async function follow() {
  for (;;) {
    try {
      const r = await fetch("/api/events", { headers: headers() });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let finished = false;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
          if (data) {
            const s = JSON.parse(data);
            render(s);
            finished = s.finished;
          }
        }
      }
      if (finished) {
        text($("link"), "the run is over; this page shows its end");
        return;
      }
    } catch (e) {
      text($("link"), `reconnecting (${e.message})`);
    }
    await new Promise((ok) => setTimeout(ok, 2000));
  }
}

// The state when the page was served, so the first paint shows the run.
const initial = $("initial-state");
if (initial) render(JSON.parse(initial.textContent));
follow();
