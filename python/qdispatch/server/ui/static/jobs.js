// The jobs table: the rows' statuses follow the event stream as they change, and the page
// is re-read (same filters) when one changes or every few seconds, for new jobs.
"use strict";

(() => {
  const { el, status, jobLink, setLink, when } = QD;
  const query = document.body.dataset.query || "";
  const page = document.body.dataset.pageNumber || "1";
  const path = "/api/jobs?" + (query ? query + "&" : "") + "page=" + page;
  const rows = document.getElementById("rows");

  function ids() {
    return Array.from(rows.querySelectorAll("tr[data-job-id]"), (tr) => tr.dataset.jobId);
  }

  function row(j) {
    const tags = el("td", { class: "tags" }, ...j.tags.map((t) => el("span", { class: "tag" }, t)));
    if (j.set_id) tags.append(setLink(j.set_id));
    return el(
      "tr",
      { "data-job-id": j.id },
      el("td", {}, jobLink(j.id)),
      el("td", { class: "name" }, j.name || ""),
      el("td", {}, j.backend),
      el("td", { class: "st" }, status(j.status)),
      el("td", { class: "num" }, j.n_experiments),
      tags,
      el("td", { class: "when" }, when(j.created)),
      el("td", {}, j.owner)
    );
  }

  async function reload() {
    try {
      const data = await QD.getJson(path);
      const fresh = data.jobs.map(row);
      rows.replaceChildren(
        ...(fresh.length ? fresh : [el("tr", { class: "empty" }, el("td", { colspan: 8 }, "No jobs match."))])
      );
      document.getElementById("count").textContent = data.count;
      document.getElementById("pages").textContent = data.pages;
      stream.follow(ids());
    } catch (e) {
      QD.setLive(false);
    }
  }

  const later = QD.debounce(reload, 400);
  const stream = new QD.Stream({ jobIds: ids() }, (event) => {
    if (event.type !== "status") return;
    const tr = rows.querySelector('tr[data-job-id="' + CSS.escape(event.job_id) + '"]');
    if (tr && event.data && event.data.status) {
      tr.querySelector("td.st").replaceChildren(status(event.data.status));
    }
    later(); // a status filter, or the order, may have changed what this page holds
  });
  setInterval(reload, 5000);
})();
