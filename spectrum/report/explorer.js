// The token explorer's script: read the embedded examples and draw the selected ones.
//
// spectrum/report/explorer.py inlines this file into the report's index.html, after the JSON
// element with id token-explorer-data that holds the examples, so the page needs no server and
// fetches nothing. The data (written by spectrum/report/payload.py) is
//   runs:      [{name, role, x (ln T of the embedded checkpoints), keep, bands, window (ln T of
//              the first and last fitted checkpoints), replicas (indices of its seed replicas)}]
//   kinds, bands, band_keys: the names of the kinds and learning-time bands (band_keys in URLs)
//   has_freq, has_ws, has_step, has_context: which annotations the evaluation set carries
//   ctx_n:     tokens of context shown before each target
//   sampling, decoding: sentences for the page
//   pieces:    token id -> decoded text (null: the ids are shown instead)
//   seqs:      seq_id -> [first position, token ids] (the context of the drawn targets)
//   cells:     [run, band, kind, freq quartile, word start, tokens in the cell] per drawn cell
//   ex:        the examples as parallel columns (run, band, kind, fq, ws, tok, seq, pos, tid,
//              step, cens, lo, hi, tau, k, tau_se, r2, loss, others); indices into
//              runs/kinds/bands; cens: 0 none, 1 hi censored (tau before the first fitted
//              checkpoint), 2 lo censored (after the last); others[i][run]: [tau, tau_se, kind,
//              cens]. A censored hi or lo is an extrapolated asymptote: never printed.
// The URL fragment #run=<name>&kind=<kind> (also band=<key>, freq=1..4, ws=yes|no) preselects a
// cell; changing a control writes the selection back into the fragment.
(function () {
  'use strict';

  const root = document.getElementById('token-explorer');
  const D = JSON.parse(document.getElementById('token-explorer-data').textContent);
  const E = D.ex;
  const N = E.run.length;
  const PAGE = 40;  // examples shown at first and added by "show more"

  const $ = (selector) => root.querySelector(selector);

  // ---- DOM helpers -------------------------------------------------------------------------

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }

  // T (tokens) from x = ln T, e.g. 3.2e7
  const fmtT = (x) => Math.exp(x).toExponential(1).replace('e+', 'e');
  const CENS_HI = 1, CENS_LO = 2;
  // a number with d decimals, '-' where missing
  const f = (v, d) => (v === null || v === undefined ? '-' : v.toFixed(d));

  // ---- the controls: one <select> per axis of a cell ----------------------------------------

  // [key in the URL, label, option names, option values (default: the names)]
  const axes = [
    ['run', 'run', D.runs.map((r) => r.name)],
    ['band', 'band', D.bands, D.band_keys],
    ['kind', 'kind', D.kinds],
  ];
  if (D.has_freq) {
    axes.push(['freq', 'frequency',
      ['quartile 1 (rarest)', 'quartile 2', 'quartile 3', 'quartile 4 (most frequent)'],
      ['1', '2', '3', '4']]);
  }
  if (D.has_ws) axes.push(['ws', 'word start', ['word start', 'inside a word'], ['yes', 'no']]);

  const sel = {};  // axis key -> selected value ('' means any)
  let shown = PAGE;

  function readHash() {
    const h = {};
    for (const part of location.hash.replace(/^#/, '').split('&')) {
      const i = part.indexOf('=');
      if (i > 0) h[decodeURIComponent(part.slice(0, i))] = decodeURIComponent(part.slice(i + 1));
    }
    return h;
  }

  function writeHash() {
    const parts = [];
    for (const [key] of axes) if (sel[key]) parts.push(key + '=' + encodeURIComponent(sel[key]));
    try {
      history.replaceState(null, '', '#' + parts.join('&'));
    } catch (e) {
      // some browsers refuse replaceState on file:// pages; the selection still works
    }
  }

  // The selection starts from the URL fragment, else the first run's learned tokens.
  function buildControls(h) {
    const form = $('.te-controls');
    for (const [key, label, names, keys] of axes) {
      const s = el('select', {name: key});
      if (key !== 'run') s.appendChild(el('option', {value: ''}, 'any'));
      names.forEach((n, i) => s.appendChild(el('option', {value: keys ? keys[i] : n}, n)));
      const fallback = key === 'kind' ? 'learned' : (key === 'run' ? D.runs[0].name : '');
      const want = h[key] !== undefined ? h[key] : fallback;
      if ([...s.options].some((o) => o.value === want)) s.value = want;
      sel[key] = s.value;
      s.addEventListener('change', () => {
        sel[key] = s.value;
        shown = PAGE;
        writeHash();
        draw();
      });
      const l = el('label', {}, label + ' ');
      l.appendChild(s);
      form.appendChild(l);
    }
  }

  const runI = () => D.runs.findIndex((r) => r.name === sel.run);

  // Whether a cell (or an example, by its cell) lies in the selection.
  function match(run, band, kind, fq, ws) {
    return run === runI() &&
      (!sel.band || D.band_keys[band] === sel.band) &&
      (!sel.kind || D.kinds[kind] === sel.kind) &&
      (!sel.freq || String(fq) === sel.freq) &&
      (!sel.ws || (ws === 1) === (sel.ws === 'yes'));
  }

  // ---- one example: its context, its chart and its facts ------------------------------------

  function piece(id) {
    if (!D.pieces) return '[' + id + ']';
    const t = D.pieces[id];
    return t === undefined ? '[' + id + ']' : t;
  }

  // A token's text as a node; newlines are drawn as a visible return sign.
  function addPiece(div, id, target) {
    const t = piece(id);
    const node = target ? el('mark', {title: 'target, id ' + id}) : el('span', {title: 'id ' + id});
    if (!D.pieces) {
      node.className = target ? '' : 'te-id';
      node.textContent = t;
      div.appendChild(node);
      return;
    }
    t.split('\n').forEach((p, j) => {
      if (j > 0) node.appendChild(el('span', {class: 'te-ws'}, '\u23ce'));
      node.appendChild(document.createTextNode(p));
    });
    div.appendChild(node);
  }

  // Up to ctx_n tokens before the target (positions never read are -1 and skipped), then the
  // target highlighted.
  function context(i) {
    const div = el('div', {class: 'te-ctx'});
    const span = D.seqs[String(E.seq[i])];
    if (span) {
      const [start, ids] = span;
      for (let p = Math.max(start, E.pos[i] - D.ctx_n); p < E.pos[i]; p++) {
        const id = ids[p - start];
        if (id === undefined || id < 0) continue;
        addPiece(div, id, false);
      }
    } else if (!D.has_context) {
      div.appendChild(el('span', {class: 'te-ws'},
        '(no context: the evaluation set has no sequences file) '));
    }
    addPiece(div, E.tid[i], true);
    return div;
  }

  // The measured loss at each embedded checkpoint (dots), the fitted sigmoid (line) and tau
  // (dashed), against ln T.
  function chart(i) {
    const W = 250, H = 110, L = 34, R = 6, T = 6, B = 18;  // size and margins in pixels
    const xs = D.runs[E.run[i]].x, ys = E.loss[i];
    const lo = E.lo[i], hi = E.hi[i], tau = E.tau[i], k = E.k[i];
    const fin = ys.filter((v) => v !== null);
    // a censored asymptote is an extrapolation: it does not set the axis
    if (lo !== null && E.cens[i] !== CENS_LO) fin.push(lo);
    if (hi !== null && E.cens[i] !== CENS_HI) fin.push(hi);
    let y0 = Math.min(...fin), y1 = Math.max(...fin);
    if (!(y1 > y0)) {
      y0 -= 0.5;
      y1 += 0.5;
    }
    const x0 = xs[0], x1 = xs[xs.length - 1] > x0 ? xs[xs.length - 1] : x0 + 1;
    const X = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
    const Y = (y) => T + (y1 - y) / (y1 - y0) * (H - T - B);

    const s = svg('svg', {width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img'});
    s.appendChild(svg('rect', {x: L, y: T, width: W - L - R, height: H - T - B, fill: 'none',
                               stroke: '#ccc'}));
    if (tau !== null && tau >= x0 && tau <= x1) {
      s.appendChild(svg('line', {x1: X(tau), x2: X(tau), y1: T, y2: H - B, stroke: '#c62828',
                                 'stroke-dasharray': '3,2'}));
    }
    if (lo !== null && hi !== null && tau !== null && k !== null) {
      let d = '';
      for (let j = 0; j <= 80; j++) {
        const x = x0 + (x1 - x0) * j / 80;
        const y = lo + (hi - lo) / (1 + Math.exp(k * (x - tau)));
        d += (j ? 'L' : 'M') + X(x).toFixed(1) + ',' + Y(Math.min(Math.max(y, y0), y1)).toFixed(1);
      }
      s.appendChild(svg('path', {d: d, fill: 'none', stroke: '#1565c0', 'stroke-width': 1.5}));
    }
    ys.forEach((y, j) => {
      if (y !== null) {
        s.appendChild(svg('circle', {cx: X(xs[j]).toFixed(1), cy: Y(y).toFixed(1), r: 1.8,
                                     fill: '#333'}));
      }
    });
    const txt = (x, y, t, anchor) => {
      const e = svg('text', {x: x, y: y, 'font-size': 9, 'text-anchor': anchor || 'start',
                             fill: '#555'});
      e.textContent = t;
      s.appendChild(e);
    };
    txt(L, H - 5, 'T ' + fmtT(x0));
    txt(W - R, H - 5, fmtT(x1), 'end');
    txt(L - 3, T + 8, y1.toFixed(1), 'end');
    txt(L - 3, H - B, y0.toFixed(1), 'end');
    txt(L - 3, (H - B + T) / 2 + 3, 'nats', 'end');
    return s;
  }

  function verdict(i) {
    if (!D.has_step || E.step[i] === null) return 'step vs smooth: not computed';
    return 'step vs smooth: ' + (E.step[i] ? 'step preferred' : 'smooth preferred');
  }

  // tau, k and the loss before -> after the step; a censored side is said in words, never
  // printed as a number (it is the sigmoid's extrapolated asymptote).
  function stepFacts(i) {
    const tau = E.tau[i], w = D.runs[E.run[i]].window;
    const tauT = ' (T \u2248 ' + (tau === null ? '-' : fmtT(tau)) + ' tokens)';
    if (E.cens[i] === CENS_HI) {
      const what = D.kinds[E.kind[i]] === 'learned' ? 'learned' : 'step';
      return what + ' before the first checkpoint (tau < ' + f(w[0], 2) + ', T ' +
        fmtT(w[0]) + ' tokens), k = ' + f(E.k[i], 2) + ', loss \u2192 ' + f(E.lo[i], 2) +
        ' nats (the loss before the step was not measured)';
    }
    if (E.cens[i] === CENS_LO) {
      return 'midpoint after the last checkpoint (tau > ' + f(w[1], 2) + ', T ' +
        fmtT(w[1]) + ' tokens), k = ' + f(E.k[i], 2) + ', loss ' + f(E.hi[i], 2) +
        ' \u2192 (not reached) nats';
    }
    return 'tau = ' + f(tau, 2) + ' \u00b1 ' + f(E.tau_se[i], 2) + tauT + ', k = ' +
      f(E.k[i], 2) + ', loss ' + f(E.hi[i], 2) + ' \u2192 ' + f(E.lo[i], 2) + ' nats';
  }

  // The same token in another run: [tau, tau_se, kind, cens], or null.
  function otherTau(o) {
    if (!o) return '-';
    if (o[3] === CENS_HI) return 'before the first checkpoint (' + o[2] + ')';
    if (o[3] === CENS_LO) return 'after the last checkpoint (' + o[2] + ')';
    return f(o[0], 2) + ' \u00b1 ' + f(o[1], 2) + ' (' + o[2] + ')';
  }

  // The example's run and its seed replicas: the spread of tau across them (standard deviation
  // over the runs with tau inside their checkpoints) against the standard error of one tau (root
  // mean square of their fitted errors); about 1 when the step replicates within its errors.
  function agreement(i, reps) {
    const runs = [E.run[i], ...reps];
    const taus = [], ses = [];
    let outside = 0;
    for (const j of runs) {
      const o = E.others[i][j];
      if (!o || o[0] === null) continue;
      if (o[3] !== 0) {
        outside++;
        continue;
      }
      taus.push(o[0]);
      if (o[1] !== null) ses.push(o[1]);
    }
    const head = 'seed replicas (' + runs.map((j) => D.runs[j].name).join(', ') + '): ';
    const out = outside ? '; ' + outside + ' with tau outside the checkpoints' : '';
    if (taus.length < 2) {
      return head + 'tau inside the checkpoints in ' + taus.length + ' run' + out;
    }
    const m = taus.reduce((a, b) => a + b, 0) / taus.length;
    const sd = Math.sqrt(taus.reduce((a, b) => a + (b - m) * (b - m), 0) / (taus.length - 1));
    const se = ses.length ? Math.sqrt(ses.reduce((a, b) => a + b * b, 0) / ses.length) : null;
    const ratio = se ? sd / se : null;
    const words = ratio === null ? '' : (ratio <= 2 ? ', within its errors' :
      ', wider than its errors: the step time is not a property of the token alone');
    return head + 'spread of tau ' + f(sd, 2) + ' (SD over ' + taus.length + ' runs) against ' +
      'a standard error of ' + f(se, 2) + (ratio === null ? '' : ' (' + f(ratio, 1) + '\u00d7)') +
      words + out;
  }

  // One example as a card; the data-* attributes are hooks for tests and scripts.
  function card(i) {
    const c = el('div', {class: 'token-example', 'data-run': D.runs[E.run[i]].name,
                         'data-kind': D.kinds[E.kind[i]], 'data-band': D.band_keys[E.band[i]],
                         'data-token': String(E.tok[i]),
                         'data-censored': ['none', 'hi', 'lo'][E.cens[i]]});
    c.appendChild(chart(i));
    const body = el('div', {class: 'te-body'});
    body.appendChild(context(i));
    const facts = el('div', {class: 'te-facts'});
    facts.appendChild(el('div', {}, stepFacts(i) + ', R\u00b2 ' + f(E.r2[i], 3) + '; ' +
      verdict(i)));
    facts.appendChild(el('div', {},
      D.kinds[E.kind[i]] + ', band ' + D.bands[E.band[i]] +
      (E.fq[i] !== null ? ', frequency quartile ' + E.fq[i] : '') +
      (E.ws[i] !== null ? (E.ws[i] ? ', word start' : ', inside a word') : '') +
      '; token ' + E.tok[i] + ' (sequence ' + E.seq[i] + ', position ' + E.pos[i] + ')'));
    const reps = D.runs[E.run[i]].replicas || [];
    const others = [];
    E.others[i].forEach((o, j) => {
      if (j !== E.run[i]) {
        others.push(D.runs[j].name + (reps.includes(j) ? ' [seed replica]' : '') + ' ' +
                    otherTau(o));
      }
    });
    facts.appendChild(el('div', {}, 'tau in the other runs: ' + (others.join('; ') || 'none')));
    if (reps.length) facts.appendChild(el('div', {class: 'te-rep'}, agreement(i, reps)));
    body.appendChild(facts);
    c.appendChild(body);
    return c;
  }

  // ---- the list ----------------------------------------------------------------------------

  // The first `shown` examples of the selection, and how many tokens the selection holds.
  function draw() {
    const list = $('.te-list');
    list.textContent = '';
    const hits = [];
    for (let i = 0; i < N; i++) {
      if (match(E.run[i], E.band[i], E.kind[i], E.fq[i], E.ws[i])) hits.push(i);
    }
    let population = 0;
    for (const c of D.cells) if (match(c[0], c[1], c[2], c[3], c[4])) population += c[5];
    hits.slice(0, shown).forEach((i) => list.appendChild(card(i)));
    $('.te-status').textContent = 'Showing ' + Math.min(shown, hits.length) + ' of ' +
      hits.length + ' examples drawn from the ' + population + ' tokens of ' + sel.run +
      ' in this selection.';
    $('.te-more').style.display = hits.length > shown ? '' : 'none';
  }

  $('.te-intro').textContent = D.sampling + ' ' + D.decoding +
    ' Chart: measured loss at each checkpoint (dots), fitted sigmoid (line), tau (dashed), ' +
    'against ln T. Link to a selection with #run=<name>&kind=<kind>.';
  $('.te-more').addEventListener('click', () => {
    shown += PAGE;
    draw();
  });
  const h = readHash();
  buildControls(h);
  draw();
  if (h.run || h.kind) root.scrollIntoView();
})();
