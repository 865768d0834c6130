// The overview: figures, queues and failures refreshed every few seconds, and the
// throughput sparkline drawn as inline SVG from /ui/api/overview.
"use strict";

(() => {
  const { el, svg, status, jobLink, when, duration } = QD;

  function sparkline(finished, bucketSeconds) {
    const box = document.getElementById("sparkline");
    const width = 600;
    const height = 80;
    const top = Math.max(1, ...finished);
    const step = width / Math.max(1, finished.length - 1);
    const points = finished.map((n, i) => [i * step, height - 6 - (n / top) * (height - 16)]);
    box.replaceChildren();
    box.append(svg("line", { x1: 0, y1: height - 6, x2: width, y2: height - 6, class: "axis" }));
    const line = points.map(([x, y]) => x.toFixed(1) + "," + y.toFixed(1)).join(" ");
    const area = "0," + (height - 6) + " " + line + " " + width + "," + (height - 6);
    box.append(svg("polygon", { points: area, class: "spark-area" }));
    box.append(svg("polyline", { points: line, class: "spark-line" }));
    finished.forEach((n, i) => {
      const dot = svg("circle", { cx: points[i][0], cy: points[i][1], r: n ? 2.5 : 0, class: "spark-dot" });
      const minutes = ((finished.length - 1 - i) * bucketSeconds) / 60;
      const tip = svg("title", {});
      tip.textContent = n + " jobs finished " + (minutes ? minutes + " min ago" : "in the last minute");
      dot.append(tip);
      box.append(dot);
    });
    const label = svg("text", { x: 4, y: 12, class: "spark-label" });
    label.textContent = "peak " + top + "/min";
    box.append(label);
  }

  function render(data) {
    document.getElementById("w-busy").textContent = data.workers.busy;
    document.getElementById("w-idle").textContent = data.workers.idle;
    document.getElementById("w-starting").textContent = data.workers.starting;
    document.getElementById("capacity").textContent = data.capacity;
    document.getElementById("j-queued").textContent = data.queued_jobs;
    document.getElementById("j-running").textContent = data.running_jobs;
    document.getElementById("j-rate").textContent = data.throughput.jobs_per_second.toFixed(2);
    sparkline(data.throughput.finished, data.throughput.bucket_seconds);
    document.getElementById("queues").replaceChildren(
      ...data.queues.map((q) =>
        el(
          "tr",
          { class: q.depth ? null : "quiet" },
          el("td", {}, q.backend),
          el("td", { class: "num" }, q.depth),
          el("td", { class: "num" }, duration(q.mean_run_seconds)),
          el("td", { class: "num" }, duration(q.eta_seconds)),
          el("td", {}, q.paused ? "paused" : "active")
        )
      )
    );
    const failures = data.failures.map((j) =>
      el(
        "tr",
        {},
        el("td", {}, jobLink(j.id)),
        el("td", { class: "name" }, j.name || ""),
        el("td", {}, j.backend),
        el("td", { class: "error" }, j.error || ""),
        el("td", { class: "when" }, when(j.finished))
      )
    );
    document.getElementById("failures").replaceChildren(
      ...(failures.length ? failures : [el("tr", { class: "empty" }, el("td", { colspan: 5 }, "No failed jobs."))])
    );
  }

  async function refresh() {
    try {
      render(await QD.getJson("/api/overview"));
      QD.setLive(true);
    } catch (e) {
      QD.setLive(false);
    }
  }

  refresh();
  setInterval(refresh, 3000);
})();
