// What every dashboard page shares: fetching JSON, posting with the CSRF token, building
// elements (text only ever goes in through textContent), formatting, and the live stream.
"use strict";

const QD = (() => {
  const prefix = document.body.dataset.prefix || "/ui";
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";
  const SVG = "http://www.w3.org/2000/svg";

  function toLogin() {
    const here = location.pathname + location.search;
    location.href = prefix + "/login?next=" + encodeURIComponent(here);
  }

  async function answer(response) {
    if (response.status === 401) {
      toLogin();
      throw new Error("not logged in");
    }
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.error ? body.error.message : response.statusText;
      throw new Error(message);
    }
    return body;
  }

  async function getJson(path) {
    const response = await fetch(prefix + path, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    });
    return answer(response);
  }

  async function post(path) {
    const response = await fetch(prefix + path, {
      method: "POST",
      credentials: "same-origin",
      headers: { Accept: "application/json", "X-CSRF-Token": csrf },
    });
    return answer(response);
  }

  // el("td", {class: "num"}, "3", child…): attributes by setAttribute, text by text nodes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    return node;
  }

  function when(iso) {
    return iso ? iso.replace("T", " ").slice(0, 19) + " UTC" : "—";
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 60) return seconds < 10 ? seconds.toFixed(2) + " s" : Math.round(seconds) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.floor(seconds % 60) + " s";
    return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
  }

  function status(name) {
    return el("span", { class: "status s-" + String(name).toLowerCase() }, name);
  }

  function jobLink(id) {
    return el("a", { class: "mono", href: prefix + "/jobs/" + encodeURIComponent(id) }, id);
  }

  function setLink(id) {
    return el("a", { class: "tag set", href: prefix + "/sets/" + encodeURIComponent(id) }, "set " + id);
  }

  // Bars whose length is data: CSSOM widths (the page's CSP allows no style attributes).
  function fillBars(root) {
    for (const bar of (root || document).querySelectorAll("[data-fraction]")) {
      const fraction = Math.max(0, Math.min(1, Number(bar.dataset.fraction) || 0));
      bar.style.width = (fraction * 100).toFixed(1) + "%";
    }
  }

  function setLive(on, why) {
    const dot = document.getElementById("live");
    if (!dot) return;
    dot.classList.toggle("on", on);
    dot.title = on ? "live updates" : why || "live updates: reconnecting";
  }

  // The job event stream (the protocol of WS /stream, entered with the login cookie):
  // resubscribes after a reconnect from the last seq seen per job, so nothing is missed.
  class Stream {
    constructor(interest, onEvent) {
      this.jobIds = new Set(interest.jobIds || []);
      this.tags = new Set(interest.tags || []);
      this.since = Object.assign({}, interest.since || {});
      this.onEvent = onEvent;
      this.delay = 500;
      this.ws = null;
      this.connect();
    }

    connect() {
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      const ws = new WebSocket(scheme + location.host + prefix + "/stream");
      this.ws = ws;
      ws.onopen = () => this.send();
      ws.onmessage = (message) => {
        const event = JSON.parse(message.data);
        if (event.type === "subscribed") {
          // Only a stream the service serves resets the backoff: one it accepts and
          // then refuses (too many open streams, 4429) must not be retried at once.
          this.delay = 500;
          setLive(true);
        }
        if (event.type === "error") this.refusal = event.message;
        if (!event.job_id) return;
        const seen = this.since[event.job_id] || 0;
        if (event.seq <= seen) return;
        this.since[event.job_id] = event.seq;
        this.onEvent(event);
      };
      ws.onclose = (close) => {
        setLive(false);
        if (close.code === 4401) {
          toLogin();
          return;
        }
        if (close.code === 4429) {
          // Too many open streams (other tabs, scripts): wait longer, and say why.
          setLive(false, "live updates paused: " + (this.refusal || "too many open streams"));
          this.delay = Math.max(this.delay, 5000);
        }
        setTimeout(() => this.connect(), this.delay);
        this.delay = Math.min(this.delay * 2, 30000);
      };
    }

    send() {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
      this.ws.send(
        JSON.stringify({
          op: "subscribe",
          job_ids: Array.from(this.jobIds),
          tags: Array.from(this.tags),
          since: this.since,
          inline_results: false,
        })
      );
    }

    follow(jobIds) {
      const fresh = jobIds.filter((id) => !this.jobIds.has(id));
      if (!fresh.length) return;
      fresh.forEach((id) => this.jobIds.add(id));
      if (this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify({ op: "subscribe", job_ids: fresh, since: this.since }));
      }
    }
  }

  // Call fn at most once per `ms`, the last call winning.
  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  document.addEventListener("DOMContentLoaded", () => fillBars(document));
  return { prefix, csrf, getJson, post, el, svg, when, duration, status, jobLink, setLink, fillBars, Stream, debounce, setLive };
})();
