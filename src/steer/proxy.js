// The live page of `stagegate proxy --ui`: follows /ui/events and calls the
// Toxiproxy-compatible API beside it. Text goes in with textContent only.
"use strict";

const $ = (id) => document.getElementById(id);

function cell(tr, value, cls) {
  const td = document.createElement("td");
  if (value instanceof Node) td.append(value);
  else td.textContent = value === undefined || value === null ? "–" : String(value);
  if (cls) td.className = cls;
  tr.append(td);
}

function button(label, onclick) {
  const b = document.createElement("button");
  b.textContent = label;
  b.addEventListener("click", onclick);
  return b;
}

async function call(method, path, body) {
  try {
    const r = await fetch(path, {
      method,
      headers: { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    $("result").textContent = r.ok ? "done" : `refused: ${text}`;
  } catch (e) {
    $("result").textContent = `not sent: ${e.message}`;
  }
}

function render(s) {
  $("status").textContent = `${s.proxies.length} proxies, ${s.proxies.reduce((n, p) => n + p.toxics.length, 0)} toxics`;
  const body = $("proxies");
  body.replaceChildren();
  const select = $("to-proxy");
  const chosen = select.value;
  select.replaceChildren();
  for (const p of s.proxies) {
    const tr = document.createElement("tr");
    cell(tr, p.name, p.enabled ? "" : "off");
    cell(tr, `${p.listen} → ${p.upstream}`);
    cell(tr, p.connections);
    cell(tr, p.cut);
    cell(tr, p.chunks_faulted);
    const toxics = document.createElement("ul");
    for (const t of p.toxics) {
      const li = document.createElement("li");
      const ttl = t.ttl ? `, ttl ${t.ttl} ms` : "";
      li.textContent = `${t.name}: ${t.type} ${t.stream} ${JSON.stringify(t.attributes)} (toxicity ${t.toxicity}${ttl}) `;
      li.append(button("remove", () => call("DELETE", `/proxies/${encodeURIComponent(p.name)}/toxics/${encodeURIComponent(t.name)}`)));
      toxics.append(li);
    }
    cell(tr, toxics);
    cell(tr, button(p.enabled ? "disable" : "enable", () => call("POST", `/proxies/${encodeURIComponent(p.name)}`, { enabled: !p.enabled })));
    body.append(tr);
    const option = document.createElement("option");
    option.textContent = p.name;
    option.value = p.name;
    select.append(option);
  }
  if (chosen) select.value = chosen;
  $("log").replaceChildren(...s.log.slice().reverse().map((e) => {
    const li = document.createElement("li");
    li.textContent = `${e.at.slice(11, 19)} ${e.text}`;
    return li;
  }));
}

$("reset").addEventListener("click", () => call("POST", "/reset"));
$("add").addEventListener("click", () => {
  let toxic;
  try {
    toxic = JSON.parse($("toxic").value);
  } catch (e) {
    $("result").textContent = `not JSON: ${e.message}`;
    return;
  }
  call("POST", `/proxies/${encodeURIComponent($("to-proxy").value)}/toxics`, toxic);
});

const initial = $("initial-state");
if (initial) render(JSON.parse(initial.textContent));
// Server-sent events read through fetch (as the run's page does).
async function follow() {
  for (;;) {
    try {
      const r = await fetch("/ui/events");
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
          if (data) render(JSON.parse(data));
        }
      }
    } catch (e) {
      $("status").textContent = `reconnecting (${e.message})`;
    }
    await new Promise((ok) => setTimeout(ok, 2000));
  }
}

follow();
