// A job's page: status, timeline and queue follow the event stream; log lines and interim
// results are appended as they come; the histogram is drawn as inline SVG on request; the
// cancel button posts with the login's CSRF token.
"use strict";

(() => {
  const { el, svg, status, when, duration } = QD;
  const jobId = document.body.dataset.jobId;
  const base = "/api/jobs/" + encodeURIComponent(jobId);
  let histogramOpen = false;

  function timelineBar() {
    const segments = document.querySelectorAll("#timeline-bar .seg");
    const total = Array.from(segments, (s) => Number(s.dataset.seconds) || 0).reduce((a, b) => a + b, 0);
    segments.forEach((s) => {
      const share = total > 0 ? (Number(s.dataset.seconds) || 0) / total : 1 / segments.length;
      s.style.flexGrow = String(Math.max(share, 0.01));
    });
  }

  function renderJob(data) {
    const job = data.job;
    document.getElementById("status").replaceChildren(status(job.status));
    document.getElementById("run-seconds").textContent = duration(job.run_seconds);
    const q = job.queue_info;
    document.getElementById("queue").textContent = q
      ? "position " + q.position + ", start ≈ " + when(q.estimated_start_time)
      : "—";
    const error = document.getElementById("error");
    error.hidden = !job.error;
    error.textContent = job.error ? job.error.code + ": " + job.error.message : "";
    document.getElementById("timeline-bar").replaceChildren(
      ...data.timeline.map((t) => {
        const seg = el("span", { class: "seg s-" + t.step.toLowerCase(), "data-seconds": t.seconds || 0 });
        seg.title = t.step;
        return seg;
      })
    );
    timelineBar();
    document.getElementById("timeline").replaceChildren(
      ...data.timeline.map((t) =>
        el(
          "tr",
          {},
          el("td", {}, status(t.step)),
          el("td", { class: "when" }, when(t.time)),
          el("td", { class: "num" }, t.seconds === null ? "—" : duration(t.seconds) + (t.ongoing ? " (so far)" : ""))
        )
      )
    );
    const attempts = job.attempts || [];
    document.getElementById("attempts-card").hidden = !attempts.length;
    document.getElementById("attempts").replaceChildren(
      ...attempts.map((a, i) =>
        el(
          "tr",
          {},
          el("td", {}, i + 1),
          el("td", { class: "when" }, when(a.start)),
          el("td", { class: "when" }, when(a.end)),
          el("td", {}, a.outcome),
          el("td", { class: "error" }, a.reason || "")
        )
      )
    );
    const form = document.getElementById("cancel-form");
    if (form && !data.can_cancel) form.remove();
    const button = document.getElementById("show-histogram");
    if (button) {
      button.disabled = job.status !== "DONE";
      document.getElementById("histogram-note").textContent =
        job.status === "DONE" ? "" : data.final ? "the job ended " + job.status + ": no counts" : "available when the job is DONE";
      if (job.status === "DONE" && histogramOpen) showHistogram();
    }
  }

  async function refresh() {
    try {
      renderJob(await QD.getJson(base));
    } catch (e) {
      QD.setLive(false);
    }
  }

  function drawHistogram(data) {
    const box = document.getElementById("histogram");
    const bars = data.outcomes.slice();
    if (data.other) bars.push(["other", data.other]);
    const width = Math.max(360, bars.length * 56);
    const height = 260;
    const bottom = 200;
    const top = Math.max(1, ...bars.map((b) => b[1]));
    const chart = svg("svg", {
      viewBox: "0 0 " + width + " " + height,
      class: "bars",
      role: "img",
      "aria-label": "counts of the top outcomes",
    });
    chart.append(svg("line", { x1: 0, y1: bottom, x2: width, y2: bottom, class: "axis" }));
    bars.forEach(([outcome, n], i) => {
      const h = (n / top) * (bottom - 30);
      const x = i * (width / bars.length) + 8;
      const w = width / bars.length - 16;
      const rect = svg("rect", { x: x, y: bottom - h, width: w, height: h, class: outcome === "other" ? "bar other" : "bar" });
      const tip = svg("title", {});
      tip.textContent = outcome + ": " + n + " (" + ((100 * n) / data.shots).toFixed(1) + "%)";
      rect.append(tip);
      chart.append(rect);
      const count = svg("text", { x: x + w / 2, y: bottom - h - 6, class: "bar-count" });
      count.textContent = n;
      chart.append(count);
      const label = svg("text", { x: x + w / 2, y: bottom + 16, class: "bar-label", transform: "rotate(30 " + (x + w / 2) + " " + (bottom + 16) + ")" });
      label.textContent = outcome;
      chart.append(label);
    });
    const caption = el(
      "p",
      { class: "muted" },
      "Experiment " + data.experiment + (data.name ? " (" + data.name + ")" : "") + ": " + data.shots + " shots, " +
        data.distinct + " distinct outcomes" + (data.other ? ", the top " + data.outcomes.length + " shown" : "")
    );
    box.replaceChildren(chart, caption);
    box.hidden = false;
  }

  async function showHistogram() {
    histogramOpen = true;
    const select = document.getElementById("experiment");
    const experiment = select ? select.value : "0";
    const note = document.getElementById("histogram-note");
    try {
      drawHistogram(await QD.getJson(base + "/counts?experiment=" + encodeURIComponent(experiment)));
      note.textContent = "";
    } catch (e) {
      note.textContent = e.message;
    }
  }

  const button = document.getElementById("show-histogram");
  if (button) button.addEventListener("click", showHistogram);
  const select = document.getElementById("experiment");
  if (select) select.addEventListener("change", () => histogramOpen && showHistogram());

  const form = document.getElementById("cancel-form");
  if (form) {
    form.addEventListener("submit", async (submit) => {
      submit.preventDefault();
      const cancel = document.getElementById("cancel");
      cancel.disabled = true;
      try {
        await QD.post(base + "/cancel");
        await refresh();
      } catch (e) {
        cancel.disabled = false;
        const error = document.getElementById("error");
        error.hidden = false;
        error.textContent = e.message;
      }
    });
  }

  const logs = document.getElementById("logs");
  const interim = document.getElementById("interim");
  const later = QD.debounce(refresh, 150);
  const since = {};
  since[jobId] = Number(document.body.dataset.since) || 0;
  new QD.Stream({ jobIds: [jobId], since: since }, (event) => {
    if (event.type === "status" || event.type === "result") {
      later();
    } else if (event.type === "log" && event.data) {
      logs.append(document.createTextNode(event.data.text || ""));
      logs.scrollTop = logs.scrollHeight;
    } else if (event.type === "interim") {
      interim.append(el("li", {}, el("pre", {}, JSON.stringify(event.data).slice(0, 4000))));
    }
  });
  timelineBar();
  setInterval(() => {
    const running = document.querySelector("#status .s-running, #status .s-queued");
    if (running) refresh(); // "so far" times and the queue's estimate move on
  }, 5000);
})();
