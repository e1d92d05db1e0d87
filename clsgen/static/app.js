// The clsgen page: one textarea per task field, Classify, then the probability bar (with the
// threshold marker), the label and the explanation as it streams from POST /v1/classify.
// No external assets; the server embeds its settings in #clsgen-config.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const config = JSON.parse($("clsgen-config").textContent);
  const state = { controller: null, busy: false };

  const PRETTY = { text: "Note", claim: "Claim", article_abstract: "Abstract", question: "Question",
                   context: "Context" };
  const prettyName = (f) => PRETTY[f] || f.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());

  function buildFields() {
    $("model-name").textContent = config.model;
    $("task-name").textContent = config.task;
    $("positive-name").textContent = config.verbalizers[1];
    const box = $("fields");
    const single = config.fields.length === 1;
    config.fields.forEach((name) => {
      const wrap = document.createElement("div");
      wrap.className = "field" + (single || /abstract|text|context|note/i.test(name) ? " big" : "");
      const id = "field-" + name;
      const label = document.createElement("label");
      label.htmlFor = id;
      label.textContent = single ? "Paste the note" : prettyName(name);
      const area = document.createElement("textarea");
      area.id = id;
      area.name = name;
      area.dataset.field = name;
      area.spellcheck = false;
      area.setAttribute("aria-describedby", "char-count");
      area.addEventListener("input", updateCount);
      wrap.append(label, area);
      box.append(wrap);
    });
    const count = document.createElement("p");
    count.id = "char-count";
    count.className = "counter";
    box.append(count);
    updateCount();
    if (config.auth) {
      $("auth-row").hidden = false;
      const saved = sessionStorage.getItem("clsgen-api-key");
      if (saved) $("api-key").value = saved;
    }
    const t = config.threshold;
    $("threshold-marker").style.left = `${t * 100}%`;
    $("threshold-label").style.left = `${t * 100}%`;
    $("threshold-label").textContent = `threshold ${t.toFixed(2)}`;
    box.querySelector("textarea").focus();
  }

  function updateCount() {
    const n = totalChars();
    const count = $("char-count");
    count.textContent = `${n.toLocaleString("en")} / ${config.max_text_chars.toLocaleString("en")} characters` +
      (config.fields.length > 1 ? " (all fields together)" : "");
    count.classList.toggle("over", n > config.max_text_chars);
  }

  function totalChars() {
    let n = 0;
    document.querySelectorAll("textarea[data-field]").forEach((a) => { n += a.value.length; });
    return n;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  function setBusy(busy) {
    state.busy = busy;
    $("classify").disabled = busy;
    $("classify").textContent = busy ? "Classifying…" : "Classify";
    $("stop").hidden = !busy;
    $("explanation").setAttribute("aria-busy", busy && $("explain").checked ? "true" : "false");
  }

  function resetResult(explain) {
    $("result").hidden = false;
    $("probability").textContent = "…";
    $("label").textContent = "…";
    $("label").className = "label";
    $("bar").style.width = "0%";
    $("meter").setAttribute("aria-valuenow", "0");
    $("explanation").textContent = explain ? "" : "Not requested.";
    $("explanation").classList.toggle("empty", !explain);
    $("verdict").textContent = "";
    $("verdict").className = "verdict";
    $("meta").textContent = "";
  }

  function showProbability(r) {
    const p = r.probability;
    $("probability").textContent = p.toFixed(3);
    $("bar").style.width = `${(p * 100).toFixed(1)}%`;
    $("meter").setAttribute("aria-valuenow", p.toFixed(3));
    $("meter").setAttribute("aria-valuetext",
      `${(p * 100).toFixed(1)} percent; threshold ${(r.threshold * 100).toFixed(0)} percent`);
    $("threshold-marker").style.left = `${r.threshold * 100}%`;
    $("threshold-label").style.left = `${r.threshold * 100}%`;
    $("threshold-label").textContent = `threshold ${r.threshold.toFixed(2)}`;
    $("label").textContent = r.label_name;
    $("label").className = "label " + (r.label === 1 ? "positive" : "negative");
    $("label").title = `label ${r.label}`;
  }

  function showDone(r, started, explain) {
    showProbability(r);
    const ex = $("explanation");
    if (explain) {
      ex.textContent = r.explanation || "";
      if (!r.explanation) { ex.textContent = "(no explanation text)"; ex.classList.add("empty"); }
      const v = $("verdict");
      if (r.verdict === null || r.verdict === undefined) {
        v.textContent = "The explanation states no clear verdict.";
        v.className = "verdict disagree";
      } else {
        const agrees = r.verdict === r.label;
        v.textContent = `The explanation concludes ${config.verbalizers[r.verdict]}` +
          (agrees ? ", in agreement with the label." : ", which disagrees with the label.");
        v.className = "verdict " + (agrees ? "agree" : "disagree");
      }
    }
    const secs = ((performance.now() - started) / 1000).toFixed(2);
    $("meta").textContent = `${secs} s` + (r.truncated ? " · the input was truncated to fit the model" : "") +
      ` · model ${r.model}`;
  }

  function payload() {
    const fields = {};
    document.querySelectorAll("textarea[data-field]").forEach((a) => { fields[a.dataset.field] = a.value; });
    return { fields, explain: $("explain").checked, stream: true };
  }

  async function errorMessage(resp) {
    try {
      const body = await resp.json();
      if (body && body.error && body.error.message) return `${resp.status}: ${body.error.message}`;
    } catch (e) { /* not JSON */ }
    return `${resp.status}: ${resp.statusText || "request failed"}`;
  }

  // Parse a text/event-stream body into {event, data} objects.
  async function* sseEvents(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
      }
    }
  }

  async function classify() {
    if (state.busy) return;
    const body = payload();
    showError("");
    if (!Object.values(body.fields).some((v) => v.trim())) {
      showError("Paste a text to classify first.");
      document.querySelector("textarea[data-field]").focus();
      return;
    }
    if (totalChars() > config.max_text_chars) {
      showError(`The text is longer than this server accepts (${config.max_text_chars} characters).`);
      return;
    }
    const headers = { "Content-Type": "application/json", "Accept": "text/event-stream" };
    if (config.auth) {
      const key = $("api-key").value.trim();
      if (!key) { showError("Enter the API key first."); $("api-key").focus(); return; }
      sessionStorage.setItem("clsgen-api-key", key);
      headers.Authorization = `Bearer ${key}`;
    }
    const explain = body.explain;
    resetResult(explain);
    setBusy(true);
    state.controller = new AbortController();
    const started = performance.now();
    try {
      const resp = await fetch("/v1/classify", { method: "POST", headers, body: JSON.stringify(body),
                                                 signal: state.controller.signal });
      if (!resp.ok) throw new Error(await errorMessage(resp));
      let text = "";
      for await (const { event, data } of sseEvents(resp.body)) {
        if (event === "probability") showProbability(data);
        else if (event === "delta") { text += data.text; $("explanation").textContent = text; }
        else if (event === "done") showDone(data, started, explain);
        else if (event === "error") throw new Error(data.message || "the server reported an error");
      }
    } catch (e) {
      if (e.name === "AbortError") $("meta").textContent = "Stopped.";
      else showError(e.message || String(e));
    } finally {
      state.controller = null;
      setBusy(false);
    }
  }

  buildFields();
  $("form").addEventListener("submit", (e) => { e.preventDefault(); classify(); });
  $("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); classify(); }
    else if (e.key === "Escape" && state.controller) state.controller.abort();
  });
})();
