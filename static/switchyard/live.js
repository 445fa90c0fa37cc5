/* SwitchyardLive: one websocket (/ws/fleet/) per page, topics with full state, reconnect with backoff.
 *
 *   const live = SwitchyardLive.connect();
 *   const off = live.subscribe("gpu:gpu_util_pct", (state, info) => draw(state));
 *   off();  // unsubscribe this callback
 *
 * Callbacks always get the FULL current state of the topic (deltas are applied here, never seen by pages):
 *   heatmaps (gpu:<metric>, node:<set>)  {topic, kind, metric, unit(s), zmin, zmax, columns, rows:[{node, pool,
 *                                          status, ts}], z:[[...]], raw (node only), seq}
 *   kpi                                   {topic, kind, values:{...}, seq}
 *   tail:<node>                           callback(sample, {topic, node, status, seq}) — sample as in sy:latest,
 *                                          or null when the node has never reported
 * The state object is reused and updated in place on the next change: copy what you keep.
 * Wire protocol: docs/live.md.
 */
(function () {
  "use strict";

  const MIN_DELAY_MS = 1000;
  const MAX_DELAY_MS = 30000;
  const STABLE_MS = 5000;       // a connection that lived this long resets the backoff
  const PING_MS = 25000;        // keeps idle proxies from closing the socket
  const SILENCE_MS = 60000;     // nothing at all (not even a pong) for this long: assume the socket is dead

  function applyDelta(s, d) {
    if (d.set) Object.assign(s, d.set);
    if (d.values) Object.assign(s.values, d.values);
    if (d.rows) for (const [i, status, ts] of d.rows) { s.rows[i].status = status; s.rows[i].ts = ts; }
    if (d.cells) {
      for (const c of d.cells) {
        s.z[c[0]][c[1]] = c[2];
        if (c.length > 3) s.raw[c[0]][c[1]] = c[3];
      }
    }
    s.seq = d.seq;
  }

  class Live {
    constructor(opts) {
      this.url = opts.url || ((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws/fleet/");
      this.badge = opts.badge !== undefined ? opts.badge : document.getElementById("live-badge");
      this.topics = new Map();      // topic -> {callbacks:Set, state, resyncing}
      this.statusListeners = new Set();
      this.errorListeners = new Set();
      this.ws = null;
      this.attempt = 0;
      this.skewMs = 0;              // browser clock minus server clock
      this.status = "connecting";
      this.stopped = false;
      this.failedOpens = 0;         // handshakes in a row that failed before opening
      this.open();
    }

    /* --- public API ------------------------------------------------------------------------------------- */
    subscribe(topic, callback) {
      let t = this.topics.get(topic);
      if (!t) {
        t = {callbacks: new Set(), state: null, resyncing: false};
        this.topics.set(topic, t);
        this.send({type: "subscribe", topic});
      }
      t.callbacks.add(callback);
      if (t.state) this.deliver(topic, t, callback);
      return () => this.unsubscribe(topic, callback);
    }

    unsubscribe(topic, callback) {
      const t = this.topics.get(topic);
      if (!t) return;
      if (callback) t.callbacks.delete(callback); else t.callbacks.clear();
      if (t.callbacks.size === 0) {
        this.topics.delete(topic);
        this.send({type: "unsubscribe", topic});
      }
    }

    state(topic) { const t = this.topics.get(topic); return t ? t.state : null; }
    /** Server time in ms, from the browser clock corrected by the last message's `now`. */
    serverNow() { return Date.now() - this.skewMs; }
    /** Seconds since a sample's ts (epoch seconds), by the server's clock. */
    ageOf(ts) { return ts == null ? null : Math.max(0, (this.serverNow() / 1000) - ts); }
    onStatus(fn) { this.statusListeners.add(fn); fn(this.status); return () => this.statusListeners.delete(fn); }
    onError(fn) { this.errorListeners.add(fn); return () => this.errorListeners.delete(fn); }
    close() { this.stopped = true; clearTimeout(this.retryTimer); if (this.ws) this.ws.close(1000); }

    /* --- connection ----------------------------------------------------------------------------------------- */
    open() {
      clearTimeout(this.retryTimer);
      clearInterval(this.countdown);
      this.setStatus("connecting");
      let ws;
      let opened = false;
      try { ws = new WebSocket(this.url); } catch (e) { this.retry(); return; }
      this.ws = ws;
      ws.onopen = () => {
        opened = true;
        this.failedOpens = 0;
        this.openedAt = Date.now();
        this.lastHeard = Date.now();
        this.setStatus("open");
        for (const [topic, t] of this.topics) { t.resyncing = false; this.send({type: "subscribe", topic}); }
        this.pinger = setInterval(() => {
          if (Date.now() - this.lastHeard > SILENCE_MS) { ws.close(4000, "silent"); return; }
          this.send({type: "ping"});
        }, PING_MS);
      };
      ws.onmessage = (ev) => { this.lastHeard = Date.now(); this.handle(ev.data); };
      ws.onclose = (ev) => {
        clearInterval(this.pinger);
        if (this.ws !== ws) return;
        this.ws = null;
        if (this.openedAt && Date.now() - this.openedAt > STABLE_MS) this.attempt = 0;
        this.openedAt = 0;
        if (this.stopped) { this.setStatus("closed"); return; }
        if (ev.code === 4401) { this.setStatus("logged-out"); return; }   // reconnecting cannot help
        if (ev.code === 4403) { this.setStatus("forbidden"); return; }
        if (ev.code === 4400) { this.setStatus("origin-refused"); return; }
        // Never opened: the handshake itself failed (server down, or a proxy that does not pass websockets).
        if (!opened) this.failedOpens += 1; else this.failedOpens = 0;
        this.retry();
      };
    }

    retry() {
      // Exponential backoff with jitter (half fixed, half random) so a restarted server is not hit by every
      // wall screen at the same instant.
      const base = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * Math.pow(2, this.attempt));
      const delay = base / 2 + Math.random() * base / 2;
      this.attempt += 1;
      const at = Date.now() + delay;
      this.setStatus("reconnecting", Math.ceil(delay / 1000));
      clearInterval(this.countdown);
      this.countdown = setInterval(() => this.setStatus("reconnecting", Math.max(0, Math.ceil((at - Date.now()) / 1000))), 1000);
      this.retryTimer = setTimeout(() => this.open(), delay);
    }

    send(msg) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
    }

    setStatus(status, seconds) {
      this.status = status;
      const b = this.badge;
      if (b) {
        const text = {
          connecting: "connecting…",
          reconnecting: "disconnected · reconnecting in " + seconds + "s",
          "logged-out": "logged out · reload the page to log in",
          forbidden: "no access to live data",
          "origin-refused": "live data refused for this address",
          closed: "disconnected",
        }[status];
        if (status === "open") { b.hidden = true; } else if (status === "connecting" && this.attempt === 0) {
          b.hidden = true;  // the first connect is quick; do not flash a badge on every page load
        } else { b.hidden = false; b.textContent = text || "disconnected"; }
        b.dataset.status = status;
      }
      document.documentElement.dataset.live = status;
      explain(status, this);
      for (const fn of this.statusListeners) { try { fn(status, seconds); } catch (e) { console.error(e); } }
    }

    /* --- messages ---------------------------------------------------------------------------------------- */
    handle(text) {
      let msg;
      try { msg = JSON.parse(text); } catch (e) { return; }
      if (typeof msg.now === "number") this.skewMs = Date.now() - msg.now * 1000;
      if (msg.type === "error") {
        console.warn("switchyard live:", msg.error, msg.topic || "");
        for (const fn of this.errorListeners) fn(msg);
        return;
      }
      const t = msg.topic != null ? this.topics.get(msg.topic) : null;
      if (!t) return;
      if (msg.type === "frame") {
        const state = Object.assign({}, msg);
        delete state.type; delete state.now;
        t.state = state;
        t.resyncing = false;
      } else if (msg.type === "delta") {
        if (!t.state || t.resyncing || msg.seq <= t.state.seq) return;  // already have it, or a frame is coming
        if (msg.seq !== t.state.seq + 1) {                               // missed one: ask for the whole frame
          t.resyncing = true;
          this.send({type: "resync", topic: msg.topic});
          return;
        }
        applyDelta(t.state, msg);
      } else {
        return;
      }
      for (const cb of t.callbacks) this.deliver(msg.topic, t, cb);
    }

    deliver(topic, t, cb) {
      try {
        if (t.state.kind === "tail") cb(t.state.sample, t.state);
        else cb(t.state, t.state);
      } catch (e) { console.error("switchyard live callback for " + topic, e); }
    }
  }

  // The banner under the top bar: why live data stopped, and what to do about it (docs/live.md, close codes).
  function explain(status, live) {
    const banner = document.getElementById("live-banner");
    if (!banner) return;
    const d = banner.dataset;
    const here = location.pathname + location.search;
    let html = null;
    if (status === "logged-out") {
      html = "<b>Live updates stopped: you are not logged in any more</b> (logged out in another tab, the session " +
        "expired, or the account was deactivated). <a href=\"" + (d.login || "/accounts/login/") + "?next=" +
        encodeURIComponent(here) + "\">Log in again</a> to resume.";
    } else if (status === "forbidden") {
      html = "<b>Live updates refused: your account's role (" + esc(d.role || "none") + ") may not watch live " +
        "data.</b> That needs the viewer role or higher: ask an admin to grant it (Admin → Users, or " +
        "<code>manage.py createuser NAME --role viewer</code>), then reload this page.";
    } else if (status === "origin-refused") {
      html = "<b>Live updates refused: the server does not accept websockets from this page's address (" +
        esc(location.origin) + ").</b> Add <code>" + esc(location.hostname) + "</code> to " +
        "<code>SWITCHYARD_ALLOWED_HOSTS</code> on the server; behind a proxy, pass the original Host header " +
        "through. Then reload this page.";
    } else if (status === "reconnecting" && live.failedOpens >= 3) {
      html = "<b>Cannot open the live feed</b> (" + live.failedOpens + " attempts to " + esc(live.url) +
        " failed before connecting; still retrying). If pages load but this stays, the proxy in front of " +
        "Switchyard does not forward websocket upgrades for <code>/ws/</code> (see docs/deploy.md).";
    }
    banner.hidden = html === null;
    banner.dataset.status = html === null ? "" : status;
    if (html !== null && shownHtml !== html) banner.innerHTML = html;
    shownHtml = html;
  }
  let shownHtml = null;

  function esc(s) {
    return String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
  }

  let shared = null;
  window.SwitchyardLive = {
    /** The page's connection (one per page; later calls return the same one). */
    connect(opts) {
      if (!shared) shared = new Live(opts || {});
      return shared;
    },
    applyDelta,
  };
})();
