// A job set's page: the chunks follow the event stream (the set's tag); a running chunk's
// bar moves on by its expected time; failed chunks are listed with their errors.
"use strict";

(() => {
  const { el, status, jobLink, fillBars } = QD;
  const setId = document.body.dataset.setId;
  const base = "/api/sets/" + encodeURIComponent(setId);
  let chunks = [];
  let offset = 0; // the service's clock minus the browser's, in ms

  function progress(c) {
    if (c.status !== "RUNNING" || !c.running_since) return c.progress;
    const elapsed = (Date.now() + offset - Date.parse(c.running_since)) / 1000;
    return c.expected_seconds > 0 ? Math.min(0.95, elapsed / c.expected_seconds) : 0.5;
  }

  function statusList(statuses) {
    const out = [];
    for (const name of Object.keys(statuses).sort()) out.push(status(name), " " + statuses[name] + " ");
    return out;
  }

  function render(data) {
    offset = Date.parse(data.now) - Date.now();
    chunks = data.chunks;
    document.getElementById("done").textContent = data.experiments_done;
    document.getElementById("statuses").replaceChildren(...statusList(data.statuses));
    document.getElementById("total-bar").dataset.fraction = data.n_experiments ? data.experiments_done / data.n_experiments : 0;
    document.getElementById("chunks").replaceChildren(
      ...chunks.map((c) => {
        const job = c.job_id ? [jobLink(c.job_id)] : ["—"];
        if (c.attempts > 1) job.push(" ", el("span", { class: "muted" }, "(" + c.attempts + " jobs)"));
        const range = c.start === null ? "?" : c.start + "–" + (c.start + c.count - 1);
        const fill = el("span", { class: "fill s-" + c.status.toLowerCase(), "data-fraction": progress(c) });
        return el(
          "tr",
          { "data-index": c.index },
          el("td", { class: "num" }, c.index),
          el("td", {}, range),
          el("td", {}, ...job),
          el("td", {}, status(c.status)),
          el("td", { class: "bar" }, el("div", { class: "progress" }, fill))
        );
      })
    );
    const failed = data.failed.map((c) =>
      el(
        "tr",
        {},
        el("td", { class: "num" }, c.index),
        el("td", {}, c.job_id ? jobLink(c.job_id) : "—"),
        el("td", {}, status(c.status)),
        el("td", { class: "error" }, c.error || "")
      )
    );
    document.getElementById("failed").replaceChildren(
      ...(failed.length ? failed : [el("tr", { class: "empty" }, el("td", { colspan: 4 }, "No failed chunks."))])
    );
    fillBars(document);
  }

  async function refresh() {
    try {
      render(await QD.getJson(base));
    } catch (e) {
      QD.setLive(false);
    }
  }

  const later = QD.debounce(refresh, 300);
  new QD.Stream({ tags: [document.body.dataset.setTag] }, (event) => {
    if (event.type === "status") later();
  });
  refresh();
  setInterval(() => {
    document.querySelectorAll("#chunks tr").forEach((tr, i) => {
      const c = chunks[i];
      const fill = tr.querySelector(".fill");
      if (c && fill && c.status === "RUNNING") fill.dataset.fraction = progress(c);
    });
    fillBars(document);
  }, 1000);
})();
