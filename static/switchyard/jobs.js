/* Jobs pages: the list re-reads /api/v1/jobs every 3 s; a job's page re-reads /api/v1/jobs/<id> every 2 s until the
 * job is done, failed or cancelled. window.switchyardJobs.loads counts successful refreshes. */
(function () {
  "use strict";

  const cfg = JSON.parse(document.getElementById("jobs-config").textContent);
  const state = {loads: 0, last: null, error: null};
  window.switchyardJobs = state;
  const TERMINAL = ["done", "failed", "cancelled"];

  function setStatus(el, status) {
    el.textContent = status;
    el.className = "job-status-" + status;
  }

  function setProgress(root, p) {
    const bar = root.querySelector("progress");
    bar.max = Math.max(p.total, 1);
    bar.value = p.done;
    root.querySelector("[data-field=progress]").textContent = p.done + "/" + p.total + (cfg.detail_url ? " shards" : "");
  }

  function drawDetail(job) {
    const facts = document.getElementById("job-facts");
    setStatus(facts.querySelector("[data-field=status]"), job.status);
    setProgress(facts, job.progress);
    facts.querySelector("[data-field=finished]").textContent = job.timings.finished || "—";
    facts.querySelector("[data-field=usage]").textContent =
      job.usage.prompt_tokens + " in / " + job.usage.completion_tokens + " out";
    facts.querySelector("[data-field=error]").textContent = job.error;
    const rows = job.shards.map((s) => {
      const tr = document.createElement("tr");
      tr.dataset.shard = String(s.index);
      const cells = [String(s.index), s.status, s.node || "—", String(s.attempts), Math.round(s.waited_s) + " s",
        String(s.input_chars), String(s.output_chars), s.error];
      cells.forEach((text, i) => {
        const td = document.createElement("td");
        td.textContent = text;
        if (i === 1) td.className = "job-status-" + s.status;
        else if ([0, 3, 4, 5, 6].includes(i)) td.className = "num";
        else if (i === 7) td.className = "muted small";
        tr.appendChild(td);
      });
      return tr;
    });
    document.querySelector("#job-shards tbody").replaceChildren(...rows);
    document.getElementById("job-result").textContent = job.result || "(not yet)";
  }

  function drawList(data) {
    for (const job of data.results) {
      const tr = document.querySelector('tr[data-job="' + job.id + '"]');
      if (!tr) continue;  // a job newer than the page: it shows on the next reload
      setStatus(tr.querySelector("[data-field=status]"), job.status);
      setProgress(tr, job.progress);
      tr.querySelector("[data-field=error]").textContent = job.error.length > 80 ? job.error.slice(0, 79) + "…" : job.error;
    }
  }

  async function refresh() {
    try {
      const resp = await fetch(cfg.detail_url || cfg.list_url, {credentials: "same-origin", headers: {Accept: "application/json"}});
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const data = await resp.json();
      state.last = data;
      if (cfg.detail_url) drawDetail(data); else drawList(data);
      state.loads += 1;
      state.error = null;
      return !(cfg.detail_url && TERMINAL.includes(data.status));
    } catch (err) {
      state.error = String(err);
      return true;
    }
  }

  function schedule() {
    setTimeout(async () => { if (await refresh()) schedule(); }, cfg.every_ms);
  }
  schedule();
})();
