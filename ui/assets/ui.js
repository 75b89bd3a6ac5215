// Corrosion web UI: loads each page's live part from the agent, keeps it
// current with long polls (at most one repaint per second), asks for the
// API token when the agent wants one, and runs the write actions and the
// SQL console. Everything the agent sends as HTML is escaped by the agent;
// everything this script shows itself goes through textContent.
'use strict';

(function () {
  const TOKEN_KEY = 'corrosion.token';
  const HOLD_SECS = 25;

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const $ = (sel) => document.querySelector(sel);

  // Attacker-chosen text (keys, ids) shown in a confirm(): no control
  // characters (a newline could fake a second line), bounded length.
  const clean = (s) => String(s).replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, '\ufffd').slice(0, 200);

  // ---- token ----------------------------------------------------------
  // Kept in sessionStorage (this tab, gone when it closes); other tabs of
  // the same agent hand theirs over through a BroadcastChannel (same
  // origin only), so the UI asks once per browser session.
  function token() {
    try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (e) { return ''; }
  }
  // `ok`: the agent accepted it (only then is it handed to other tabs).
  function keep(t, ok) {
    try {
      sessionStorage.setItem(TOKEN_KEY, t);
      sessionStorage.setItem(TOKEN_KEY + '.ok', ok ? '1' : '');
    } catch (e) { /* private mode */ }
  }
  function accepted() {
    try { return sessionStorage.getItem(TOKEN_KEY + '.ok') === '1'; } catch (e) { return false; }
  }
  const channel = ('BroadcastChannel' in window) ? new BroadcastChannel('corrosion-token') : null;
  if (channel) {
    channel.onmessage = (ev) => {
      const m = ev.data || {};
      if (m.ask && token() && accepted()) channel.postMessage({ token: token() });
    };
  }
  function fromOtherTabs() {
    if (!channel) return Promise.resolve('');
    return new Promise((resolve) => {
      const done = (t) => { channel.removeEventListener('message', on); resolve(t); };
      const on = (ev) => { if (ev.data && typeof ev.data.token === 'string') done(ev.data.token); };
      channel.addEventListener('message', on);
      channel.postMessage({ ask: true });
      setTimeout(() => done(''), 300);
    });
  }
  let asking = null;
  async function askToken(refused) {
    if (asking) return asking;
    if (!refused) {
      const t = await fromOtherTabs();
      if (t) { keep(t, true); return; }
      if (asking) return asking;
    }
    const dialog = $('#token-dialog');
    const form = $('#token-form');
    const input = $('#token-input');
    $('#token-error').hidden = !refused;
    asking = new Promise((resolve) => {
      let submitted = false;
      form.addEventListener('submit', function done(ev) {
        ev.preventDefault();
        form.removeEventListener('submit', done);
        submitted = true;
        keep(input.value, false);
        input.value = '';
        dialog.close();
        asking = null;
        resolve();
      });
      // Esc (or anything else) closing it without a token: open it again,
      // or every request would wait on this prompt forever.
      dialog.addEventListener('close', function reopen() {
        if (submitted) { dialog.removeEventListener('close', reopen); return; }
        setTimeout(() => { if (!dialog.open) { dialog.showModal(); input.focus(); } }, 0);
      });
    });
    if (!dialog.open) dialog.showModal();
    input.focus();
    return asking;
  }

  // fetch with the token; asks for it (again) on 401/403.
  async function api(url, opts) {
    opts = opts || {};
    for (;;) {
      const headers = Object.assign({}, opts.headers || {});
      const t = token();
      if (t) headers['Authorization'] = 'Bearer ' + t;
      const r = await fetch(url, Object.assign({}, opts, {
        headers, cache: 'no-store', credentials: 'omit',
      }));
      if (r.status === 401 || r.status === 403) {
        await askToken(t !== '');
        continue;
      }
      if (t && !accepted()) keep(t, true);
      return r;
    }
  }

  function flash(msg, bad) {
    const f = $('#flash');
    f.textContent = msg;
    f.className = 'flash ' + (bad ? 'bad' : 'good');
    f.hidden = false;
  }

  function setConn(ok) {
    const c = $('#conn');
    if (!c) return;
    c.textContent = ok ? '' : 'reconnecting…';
    c.className = ok ? 'conn' : 'conn bad';
  }

  // ---- live part ------------------------------------------------------
  // Until the tab is visible again (hidden tabs hold no request: browsers
  // allow six connections per host, and a hidden page needs no repaint).
  function visible() {
    if (!document.hidden) return Promise.resolve();
    return new Promise((resolve) => {
      document.addEventListener('visibilitychange', function on() {
        if (!document.hidden) { document.removeEventListener('visibilitychange', on); resolve(); }
      });
    });
  }

  // What has the focus inside `main`, as a selector that finds the same
  // control after a repaint.
  function focusKey(main) {
    const a = document.activeElement;
    if (!a || !main.contains(a)) return null;
    if (a.getAttribute('href')) return 'a[href="' + CSS.escape(a.getAttribute('href')) + '"]';
    if (a.dataset && a.dataset.action) {
      let s = '[data-action="' + CSS.escape(a.dataset.action) + '"]';
      if (a.dataset.serviceId) s += '[data-service-id="' + CSS.escape(a.dataset.serviceId) + '"]';
      if (a.dataset.enable) s += '[data-enable="' + CSS.escape(a.dataset.enable) + '"]';
      return s;
    }
    return null;
  }

  async function live(main) {
    const base = main.dataset.fragment;
    let hash = '';
    let paints = 0;
    for (;;) {
      await visible();
      const sep = base.includes('?') ? '&' : '?';
      const url = base + sep + 'hash=' + encodeURIComponent(hash) + (hash ? '&wait=' + HOLD_SECS : '');
      const started = Date.now();
      const ctl = new AbortController();
      const onHide = () => { if (document.hidden) ctl.abort(); };
      document.addEventListener('visibilitychange', onHide);
      let r;
      let html;
      try {
        r = await api(url, { signal: ctl.signal });
        html = await r.text();
      } catch (e) {
        if (ctl.signal.aborted) continue;
        setConn(false);
        await sleep(2000);
        continue;
      } finally {
        document.removeEventListener('visibilitychange', onHide);
      }
      setConn(true);
      if (!r.ok) {
        const msg = html;
        main.textContent = '';
        const p = document.createElement('p');
        p.className = 'error';
        p.textContent = 'The agent answered ' + r.status + ': ' + msg;
        main.appendChild(p);
        main.setAttribute('aria-busy', 'false');
        await sleep(5000);
        continue;
      }
      const h = r.headers.get('x-ui-hash') || '';
      if (h !== hash) {
        // The agent escaped every value in this HTML; the page's CSP
        // forbids inline scripts and handlers.
        const focused = focusKey(main);
        const nth = focused ? [...main.querySelectorAll(focused)].indexOf(document.activeElement) : -1;
        main.innerHTML = html;
        if (focused) {
          const all = main.querySelectorAll(focused);
          const again = all[Math.max(0, Math.min(nth, all.length - 1))];
          if (again) again.focus({ preventScroll: true });
        }
        main.setAttribute('aria-busy', 'false');
        hash = h;
        paints += 1;
        main.dataset.paints = String(paints);
        main.dataset.paintedAt = String(Date.now());
        // Coalesce: at most one repaint per second.
        await sleep(1000);
      } else if (Date.now() - started < 1000) {
        // Answered at once with nothing new (the agent held too many):
        // poll once a second.
        await sleep(1000);
      }
    }
  }

  // ---- write actions --------------------------------------------------
  // A key's URL; refuses keys with '.' or '..' segments, which the browser
  // would resolve to another path (the agent refuses such keys too).
  const kvUrl = (key) => {
    if (key.split('/').some((s) => s === '.' || s === '..')) throw new Error('a key with a "." or ".." segment cannot be addressed');
    return '/v1/kv/' + key.split('/').map(encodeURIComponent).join('/');
  };

  async function write(method, url, body, done) {
    try {
      const r = await api(url, { method, body });
      const text = await r.text();
      if (!r.ok) { flash('Refused (' + r.status + '): ' + text, true); return false; }
      flash(done, false);
      return true;
    } catch (e) {
      flash('The request failed: ' + e, true);
      return false;
    }
  }

  function hex(bytes) {
    let out = '';
    for (let i = 0; i < bytes.length; i += 16) {
      const chunk = bytes.slice(i, i + 16);
      out += i.toString(16).padStart(8, '0') + '  ';
      out += Array.from(chunk, (b) => b.toString(16).padStart(2, '0')).join(' ').padEnd(48, ' ');
      out += '  ' + Array.from(chunk, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : '.')).join('') + '\n';
    }
    return out;
  }

  document.addEventListener('click', async (ev) => {
    const b = ev.target.closest('[data-action]');
    if (!b) return;
    const action = b.dataset.action;
    if (action === 'deregister') {
      const id = b.dataset.serviceId;
      if (!confirm('Deregister service instance "' + clean(id) + '" from this agent?')) return;
      await write('PUT', '/v1/agent/service/deregister/' + encodeURIComponent(id), null, 'Deregistered ' + id + '.');
    } else if (action === 'maintenance') {
      const id = b.dataset.serviceId;
      const enable = b.dataset.enable === 'true';
      let reason = '';
      if (enable) {
        reason = prompt('Put "' + clean(id) + '" in maintenance. Reason (optional):', '');
        if (reason === null) return;
      } else if (!confirm('Take "' + clean(id) + '" out of maintenance?')) {
        return;
      }
      const q = '?enable=' + enable + (reason ? '&reason=' + encodeURIComponent(reason) : '');
      await write('PUT', '/v1/agent/service/maintenance/' + encodeURIComponent(id) + q, null,
        (enable ? 'Maintenance on for ' : 'Maintenance off for ') + id + '.');
    } else if (action === 'kv-delete') {
      const key = b.dataset.key;
      if (!confirm('Delete the key "' + clean(key) + '" on every agent?')) return;
      if (await write('DELETE', kvUrl(key), null, 'Deleted ' + key + '.')) location.href = b.dataset.parent;
    } else if (action === 'kv-edit') {
      const form = $('#kv-edit');
      const r = await api(kvUrl(b.dataset.key));
      if (!r.ok) { flash('Cannot load the value (' + r.status + '): ' + clean(await r.text()), true); return; }
      const raw = await r.text();
      const entry = JSON.parse(raw)[0];
      // Saved with the same flags (a PUT without ?flags= would zero them).
      // The digits as sent (flags go up to 2^64; JSON numbers lose them).
      form.dataset.flags = (raw.match(/"Flags":\s*(\d+)/) || [0, '0'])[1];
      const bytes = Uint8Array.from(atob(entry.Value || ''), (c) => c.charCodeAt(0));
      let text;
      try { text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes); } catch (e) { text = null; }
      // A textarea rewrites CR and CRLF as LF: saving would change bytes
      // nobody edited.
      if (text === null || text.includes('\r')) {
        flash('This value is not plain UTF-8 text with LF line ends; it cannot be edited here without changing it.', true);
        return;
      }
      $('#kv-edit-value').value = text;
      form.hidden = false;
      $('#kv-edit-value').focus();
    } else if (action === 'kv-edit-cancel') {
      $('#kv-edit').hidden = true;
    } else if (action === 'kv-load') {
      const r = await api(kvUrl(b.dataset.key) + '?raw');
      if (!r.ok) { flash('Cannot load the value (' + r.status + ').', true); return; }
      const bytes = new Uint8Array(await r.arrayBuffer());
      const pre = $('#kv-loaded');
      pre.textContent = b.dataset.view === 'hex' ? hex(bytes) : new TextDecoder().decode(bytes);
      pre.hidden = false;
      b.disabled = true;
    }
  });

  function wireKvForms() {
    const edit = $('#kv-edit');
    if (edit) {
      edit.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        const key = edit.dataset.key;
        if (!confirm('Write the new value of "' + clean(key) + '" (replicated to every agent)?')) return;
        const flags = edit.dataset.flags ? '?flags=' + encodeURIComponent(edit.dataset.flags) : '';
        if (await write('PUT', kvUrl(key) + flags, $('#kv-edit-value').value, 'Saved ' + key + '.')) edit.hidden = true;
      });
    }
    const create = $('#kv-create');
    if (create) {
      create.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        const key = create.dataset.prefix + $('#kv-new-name').value;
        try { kvUrl(key); } catch (e) { flash(String(e.message), true); return; }
        if (!confirm('Create the key "' + clean(key) + '" (replicated to every agent)?')) return;
        if (await write('PUT', kvUrl(key), $('#kv-new-value').value, 'Created ' + key + '.')) {
          location.href = '/ui/kv/' + key.split('/').map(encodeURIComponent).join('/');
        }
      });
    }
  }

  // ---- SQL console ----------------------------------------------------
  function cellText(v) {
    if (v === null) return 'NULL';
    if (Array.isArray(v)) return "x'" + v.map((b) => Number(b).toString(16).padStart(2, '0')).join('') + "'";
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }

  // Reads an NDJSON body line by line.
  async function* lines(r) {
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (line) yield JSON.parse(line);
      }
    }
    if (buf.trim()) yield JSON.parse(buf);
  }

  function wireSql() {
    const form = $('#sql-form');
    if (!form) return;
    const table = $('#sql-result');
    const status = $('#sql-status');
    const stop = $('#sql-stop');
    const MAX_ROWS = 5000;
    let abort = null;

    function row(id, cells) {
      const tr = document.createElement('tr');
      tr.dataset.rowid = String(id);
      for (const c of cells) {
        const td = document.createElement('td');
        td.textContent = cellText(c);
        tr.appendChild(td);
      }
      return tr;
    }

    stop.addEventListener('click', () => { if (abort) abort.abort(); });

    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (abort) abort.abort();
      abort = new AbortController();
      const liveMode = $('#sql-live').checked;
      const thead = table.tHead;
      const tbody = table.tBodies[0];
      thead.textContent = '';
      tbody.textContent = '';
      status.textContent = 'Running…';
      stop.disabled = false;
      const rows = new Map();
      let pending = [];
      let timer = null;
      let changes = 0;
      const apply = () => {
        timer = null;
        for (const [kind, id, cells] of pending) {
          const old = rows.get(id);
          if (kind === 'delete') {
            if (old) { old.remove(); rows.delete(id); }
            continue;
          }
          if (!old && rows.size >= MAX_ROWS) continue;
          const tr = row(id, cells);
          tr.className = 'changed';
          if (old) { old.replaceWith(tr); } else { tbody.appendChild(tr); }
          rows.set(id, tr);
        }
        pending = [];
        status.textContent = 'Live: ' + rows.size + ' rows, ' + changes + ' changes applied.';
        table.dataset.changes = String(changes);
      };
      try {
        const r = await api(liveMode ? '/v1/subscriptions' : '/v1/queries', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify($('#sql-text').value),
          signal: abort.signal,
        });
        if (!r.ok) {
          let msg = await r.text();
          try { msg = JSON.parse(msg).error || msg; } catch (e) { /* plain text */ }
          status.textContent = r.status === 404
            ? 'The SQL console is not served on this listener: the Consul listener serves it only when an API token is configured. Use the API listener (api.addr).'
            : 'Error (' + r.status + '): ' + msg;
          return;
        }
        let count = 0;
        for await (const ev of lines(r)) {
          if (ev.columns) {
            const tr = document.createElement('tr');
            for (const c of ev.columns) {
              const th = document.createElement('th');
              th.scope = 'col';
              th.textContent = c;
              tr.appendChild(th);
            }
            thead.appendChild(tr);
          } else if (ev.row) {
            count += 1;
            if (count <= MAX_ROWS) {
              const tr = row(ev.row[0], ev.row[1]);
              tbody.appendChild(tr);
              rows.set(ev.row[0], tr);
            } else if (!liveMode) {
              abort.abort();
              status.textContent = 'Showing the first ' + MAX_ROWS + ' rows.';
              break;
            }
          } else if (ev.eoq) {
            status.textContent = (liveMode ? 'Live: ' : '') + count + ' rows' +
              (liveMode ? ', waiting for changes…' : ' in ' + (ev.eoq.time * 1000).toFixed(1) + ' ms.');
            table.dataset.ready = '1';
          } else if (ev.change) {
            changes += 1;
            pending.push([ev.change[0], ev.change[1], ev.change[2]]);
            if (!timer) timer = setTimeout(apply, 1000);
          } else if (ev.error) {
            status.textContent = 'Error: ' + ev.error;
          }
        }
      } catch (e) {
        if (e.name !== 'AbortError') status.textContent = 'Error: ' + e;
        else if (!status.textContent.startsWith('Showing')) status.textContent += ' Stopped.';
      } finally {
        stop.disabled = true;
      }
    });
  }

  // Esc must not close the token prompt (Chromium lets a dialog's cancel
  // event through without a user gesture since it opened).
  document.addEventListener('keydown', (ev) => {
    const d = $('#token-dialog');
    if (ev.key === 'Escape' && d && d.open) ev.preventDefault();
  }, true);

  document.addEventListener('DOMContentLoaded', () => {
    const main = $('#main');
    if (main && main.dataset.fragment) live(main);
    wireKvForms();
    wireSql();
  });
})();
