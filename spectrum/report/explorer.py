"""The token explorer: example tokens of every run inside the report's ``index.html``.

One HTML fragment, self-contained (inline data, script, style and SVG; nothing fetched): choose a
run, a learning-time band, a kind and a slice (frequency quartile, word start) and see the drawn
examples of that selection, each with its context decoded (target highlighted), its measured
trajectory and fitted sigmoid as a small chart, tau with its standard error, the step-versus-smooth
verdict, and the same token's tau in every other run. The examples are those of
:func:`spectrum.report.examples.draw_examples`; the page states how they were drawn.

Hooks: the root element is ``id="token-explorer"``, every example has the class
``token-example`` (with ``data-run``, ``data-kind``, ``data-band`` and ``data-token``), and the
URL fragment ``#run=<name>&kind=<kind>`` (also ``band=<key>``, ``freq=1..4``, ``ws=yes|no``)
preselects a cell and scrolls to the explorer.

Size: the embedded examples are held under ``budget`` bytes (default 5 MB) by lowering the
number drawn per cell (a smaller draw is a subset of a larger one) and, if even one per cell is
too much, keeping a seeded share of the examples; the page says when that happened.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from spectrum import layout
from spectrum.analysis.run_data import RunData
from spectrum.report.blocks import Block
from spectrum.report.examples import (DRAWN_KINDS, Sampling, band_keys, band_names, band_ranges,
                                      decode_pieces, draw_examples, load_evalset_tokenizer)

BUDGET = 5_000_000  # bytes of embedded example data
MAX_POINTS = 64  # trajectory points embedded per example (evenly thinned beyond)


@dataclass(frozen=True)
class Decoding:
    """Token id -> text for the ids the page shows, or None and why the ids are shown instead."""

    pieces: dict[int, str] | None
    note: str


def _round(v: Any, digits: int = 3) -> float | None:
    if v is None:
        return None
    v = float(v)
    return round(v, digits) if math.isfinite(v) else None


def _thin(n: int) -> np.ndarray:
    """Indices of at most MAX_POINTS of ``n`` checkpoints, evenly spread, first and last kept."""
    if n <= MAX_POINTS:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, MAX_POINTS)).astype(int))


def _sequences(ex: pl.DataFrame, n_before: int) -> dict[str, list]:
    """seq_id -> [first position, token ids up to the last target drawn from it]."""
    if ex["context_ids"].null_count() == ex.height:
        return {}
    spans: dict[str, list] = {}
    for seq, pos, ctx, target in ex.select(layout.SEQ_ID, layout.POS, "context_ids",
                                            layout.TARGET_ID).iter_rows():
        ids = [*ctx, target]
        start = pos - len(ctx)
        have = spans.get(str(seq))
        if have is None:
            spans[str(seq)] = [start, ids]
            continue
        lo = min(have[0], start)
        merged = {have[0] + i: t for i, t in enumerate(have[1])}
        merged.update({start + i: t for i, t in enumerate(ids)})
        hi = max(merged)
        if len(merged) == hi - lo + 1:  # contiguous
            spans[str(seq)] = [lo, [merged[p] for p in range(lo, hi + 1)]]
        else:  # a gap: keep the known positions, fill the gap with -1 (never shown)
            spans[str(seq)] = [lo, [merged.get(p, -1) for p in range(lo, hi + 1)]]
    return spans


def _runs_meta(runs: list[RunData], n_bands: int) -> list[dict]:
    out = []
    for r in runs:
        keep = _thin(len(r.x))
        out.append({"name": r.name, "role": r.role, "x": [round(float(v), 4) for v in r.x[keep]],
                    "keep": keep.tolist(), "bands": [[_round(a, 3), _round(b, 3)]
                                                     for a, b in band_ranges(r.x, n_bands)]})
    return out


def _columns(ex: pl.DataFrame, runs: list[dict]) -> dict[str, list]:
    """The examples as parallel lists (compact JSON)."""
    run_i = {r["name"]: i for i, r in enumerate(runs)}
    kind_i = {k: i for i, k in enumerate(DRAWN_KINDS)}
    cols: dict[str, list] = {"run": [run_i[r] for r in ex["run"]], "band": ex["band"].to_list(),
                             "kind": [kind_i[k] for k in ex["kind"]],
                             "fq": ex["freq_quartile"].to_list(),
                             "ws": [None if w is None else int(w) for w in ex["word_start"]],
                             "tok": ex[layout.TOKEN_IDX].to_list(),
                             "seq": ex[layout.SEQ_ID].to_list(), "pos": ex[layout.POS].to_list(),
                             "tid": ex[layout.TARGET_ID].to_list(),
                             "step": [None if s is None else int(s)
                                      for s in ex[layout.STEP_PREFERRED]]}
    for c in ("lo", "hi", "tau", "k", "tau_se", "r2"):
        cols[c] = [_round(v) for v in ex[c]]
    keeps = [np.asarray(r["keep"]) for r in runs]
    cols["loss"] = [[_round(v, 2) for v in np.asarray(loss, dtype=np.float64)[keeps[ri]]]
                    for ri, loss in zip(cols["run"], ex["loss"].to_list())]
    others = []
    for row in ex["others"].to_list():
        by_run = {o["run"]: o for o in row or []}
        others.append([[_round(by_run[r["name"]]["tau"], 2), _round(by_run[r["name"]]["tau_se"], 2),
                        by_run[r["name"]]["kind"]] if r["name"] in by_run else None
                       for r in runs])
    cols["others"] = others
    return cols


def _cells(ex: pl.DataFrame, runs: list[dict]) -> list[list]:
    """[run, band, kind, freq quartile, word start, tokens in the cell] of every drawn cell,
    sorted by all of them (the same page from the same data)."""
    run_i = {r["name"]: i for i, r in enumerate(runs)}
    kind_i = {k: i for i, k in enumerate(DRAWN_KINDS)}
    key = ["run", "band", "kind", "freq_quartile", "word_start"]
    cells = ex.select(*key, "cell_size").unique().sort([*key, "cell_size"], nulls_last=True)
    return [[run_i[r], b, kind_i[k], q, None if w is None else int(w), int(n)]
            for r, b, k, q, w, n in cells.iter_rows()]


def payload(ex: pl.DataFrame, runs: list[RunData], sampling: Sampling, decoding: Decoding,
            note: str = "") -> dict:
    """Everything the page's script reads."""
    meta = _runs_meta([r for r in runs if r.has_fits], sampling.bands)
    return {"runs": meta, "kinds": list(DRAWN_KINDS), "bands": list(band_names(sampling.bands)),
            "band_keys": list(band_keys(sampling.bands)),
            "has_freq": ex["freq_quartile"].null_count() < ex.height,
            "has_ws": ex["word_start"].null_count() < ex.height,
            "has_step": ex[layout.STEP_PREFERRED].null_count() < ex.height,
            "has_context": ex["context_ids"].null_count() < ex.height,
            "ctx_n": sampling.context,
            "sampling": sampling.describe() + (f" {note}" if note else ""),
            "decoding": decoding.note, "pieces": decoding.pieces and
            {str(k): v for k, v in decoding.pieces.items()},
            "seqs": _sequences(ex, sampling.context), "cells": _cells(ex, meta),
            "ex": _columns(ex, meta)}


def _json(data: dict) -> str:
    """JSON safe inside a <script> element."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def decoding_for(out: str | Path, ex: pl.DataFrame) -> Decoding:
    """The pieces of every token id the examples show, with the evalset's tokenizer."""
    tokenizer, note = load_evalset_tokenizer(out)
    if tokenizer is None:
        return Decoding(None, f"Token ids are shown instead of text: {note}.")
    ids = [*ex[layout.TARGET_ID].to_list()]
    for ctx in ex["context_ids"].drop_nulls().to_list():
        ids += ctx
    return Decoding(decode_pieces(tokenizer, np.asarray(ids, dtype=np.int64)),
                    f"Tokens {note[0].lower()}{note[1:]}; each token is decoded alone.")


def fit_to_budget(ex: pl.DataFrame, runs: list[RunData], sampling: Sampling,
                  decoding: Decoding, budget: int = BUDGET) -> tuple[str, Sampling, str]:
    """The JSON of the largest draw (per cell, then share) under ``budget`` bytes."""
    note = ""
    while True:
        data = _json(payload(ex, runs, sampling, decoding, note))
        size = len(data.encode())
        if size <= budget or ex.height <= 1:
            return data, sampling, note
        if sampling.per_cell > 1:
            per_cell = max(1, min(sampling.per_cell - 1,
                                  int(sampling.per_cell * budget / size * 0.95)))
            sampling = replace(sampling, per_cell=per_cell)
            ex = ex.filter(pl.col("rank") < per_cell)
        else:
            keep = max(1, int(ex.height * budget / size * 0.95))
            ex = ex.head(keep)  # rows are in the order of the seeded random key
            note = (f"To keep the page small, {keep} of the cells' examples are embedded, "
                    "chosen at random with the same seed.")


def render(data_json: str) -> str:
    """The explorer's HTML fragment around its JSON data."""
    return (f'<section id="token-explorer"><style>{_CSS}</style>'
            '<p class="te-intro"></p><form class="te-controls"></form>'
            '<p class="te-status"></p><div class="te-list"></div>'
            '<button type="button" class="te-more">show more</button>'
            '<noscript>The token explorer needs JavaScript.</noscript>'
            f'<script type="application/json" id="token-explorer-data">{data_json}</script>'
            f'<script>{_JS}</script></section>')


def explorer_blocks(out: str | Path, runs: list[RunData], *,
                    sampling: Sampling = Sampling(), budget: int = BUDGET) -> list[Block]:
    """The report's token-explorer section: a heading and the fragment (with a sentence for the
    Markdown report, which cannot hold it)."""
    ex = draw_examples(out, runs, sampling)
    if not ex.height:
        return [Block("h2", "Token explorer"),
                Block("p", "No run has fits, so there are no example tokens to show.")]
    decoding = decoding_for(out, ex)
    data, used, note = fit_to_budget(ex, runs, sampling, decoding, budget)
    n = len(json.loads(data)["ex"]["run"])
    md = (f"The token explorer in index.html shows {n} example tokens of "
          f"{ex['run'].n_unique()} runs. {used.describe()} {note} {decoding.note} "
          "The same examples, as a polars frame: spectrum.report.examples.draw_examples.")
    return [Block("h2", "Token explorer"), Block("html", " ".join(md.split()), html=render(data))]


_CSS = """#token-explorer{border-top:1px solid #ccc;padding-top:.5em}
#token-explorer form{display:flex;flex-wrap:wrap;gap:.4em 1.2em;margin:.6em 0}
#token-explorer label{font-size:.9em}
#token-explorer .token-example{display:flex;gap:1em;border:1px solid #ddd;border-radius:4px;
padding:.4em .6em;margin:.5em 0;font-size:.85em}
#token-explorer .te-ctx{font-family:ui-monospace,monospace;white-space:pre-wrap;
word-break:break-all;background:#f7f7f7;padding:.2em .4em;margin-bottom:.3em}
#token-explorer .te-ctx .te-id{color:#555;margin-right:.25em}
#token-explorer mark{background:#ffd54f;outline:1px solid #c9a100}
#token-explorer .te-ws{color:#aaa}
#token-explorer .te-facts div{margin:.1em 0}
#token-explorer .te-body{flex:1;min-width:0}
#token-explorer svg{flex:none;background:#fff}"""

_JS = r"""(function(){
const root=document.getElementById('token-explorer');
const D=JSON.parse(document.getElementById('token-explorer-data').textContent);
const E=D.ex,N=E.run.length,PAGE=40;
const $=(s)=>root.querySelector(s);
function el(tag,attrs,text){const e=document.createElement(tag);
 for(const k in attrs||{})e.setAttribute(k,attrs[k]);if(text!==undefined)e.textContent=text;return e;}
function svg(tag,attrs){const e=document.createElementNS('http://www.w3.org/2000/svg',tag);
 for(const k in attrs)e.setAttribute(k,attrs[k]);return e;}
const fmtT=(x)=>Math.exp(x).toExponential(1).replace('e+','e');
const f=(v,d)=>v===null||v===undefined?'-':v.toFixed(d);
const axes=[['run','run',D.runs.map((r)=>r.name)],['band','band',D.bands,D.band_keys],
 ['kind','kind',D.kinds]];
if(D.has_freq)axes.push(['freq','frequency',['quartile 1 (rarest)','quartile 2','quartile 3',
 'quartile 4 (most frequent)'],['1','2','3','4']]);
if(D.has_ws)axes.push(['ws','word start',['word start','inside a word'],['yes','no']]);
const sel={};
function readHash(){const h={};for(const part of location.hash.replace(/^#/,'').split('&')){
 const i=part.indexOf('=');if(i>0)h[decodeURIComponent(part.slice(0,i))]=decodeURIComponent(part.slice(i+1));}
 return h;}
function buildControls(h){const form=$('.te-controls');
 for(const [key,label,names,keys] of axes){const s=el('select',{name:key});
  if(key!=='run')s.appendChild(el('option',{value:''},'any'));
  names.forEach((n,i)=>s.appendChild(el('option',{value:keys?keys[i]:n},n)));
  const want=h[key]!==undefined?h[key]:(key==='kind'?'learned':(key==='run'?D.runs[0].name:''));
  if([...s.options].some((o)=>o.value===want))s.value=want;
  sel[key]=s.value;s.addEventListener('change',()=>{sel[key]=s.value;shown=PAGE;writeHash();draw();});
  const l=el('label',{},label+' ');l.appendChild(s);form.appendChild(l);}}
function writeHash(){const parts=[];for(const [key] of axes)if(sel[key])parts.push(key+'='+encodeURIComponent(sel[key]));
 try{history.replaceState(null,'','#'+parts.join('&'));}catch(e){}}
const runI=()=>D.runs.findIndex((r)=>r.name===sel.run);
function match(run,band,kind,fq,ws){return run===runI()&&(!sel.band||D.band_keys[band]===sel.band)&&
 (!sel.kind||D.kinds[kind]===sel.kind)&&(!sel.freq||String(fq)===sel.freq)&&
 (!sel.ws||(ws===1)===(sel.ws==='yes'));}
function piece(id){if(!D.pieces)return '['+id+']';const t=D.pieces[id];return t===undefined?'['+id+']':t;}
function context(i){const div=el('div',{class:'te-ctx'});const span=D.seqs[String(E.seq[i])];
 if(span){const [start,ids]=span;for(let p=Math.max(start,E.pos[i]-D.ctx_n);p<E.pos[i];p++){
  const id=ids[p-start];if(id===undefined||id<0)continue;addPiece(div,id,false);}}
 else if(!D.has_context)div.appendChild(el('span',{class:'te-ws'},'(no context: the evaluation set has no sequences file) '));
 addPiece(div,E.tid[i],true);return div;}
function addPiece(div,id,target){const t=piece(id);const node=target?el('mark',{title:'target, id '+id}):el('span',{title:'id '+id});
 if(!D.pieces){node.className=target?'':'te-id';node.textContent=t;div.appendChild(node);return;}
 const parts=t.split('\n');parts.forEach((p,j)=>{if(j>0)node.appendChild(el('span',{class:'te-ws'},'\u23ce'));
  node.appendChild(document.createTextNode(p));});div.appendChild(node);}
function chart(i){const W=250,H=110,L=34,R=6,T=6,B=18;const r=D.runs[E.run[i]],xs=r.x,ys=E.loss[i];
 const lo=E.lo[i],hi=E.hi[i],tau=E.tau[i],k=E.k[i];const fin=ys.filter((v)=>v!==null);
 if(lo!==null)fin.push(lo);if(hi!==null)fin.push(hi);
 let y0=Math.min(...fin),y1=Math.max(...fin);if(!(y1>y0)){y0-=0.5;y1+=0.5;}
 const x0=xs[0],x1=xs[xs.length-1]>x0?xs[xs.length-1]:x0+1;
 const X=(x)=>L+(x-x0)/(x1-x0)*(W-L-R),Y=(y)=>T+(y1-y)/(y1-y0)*(H-T-B);
 const s=svg('svg',{width:W,height:H,viewBox:'0 0 '+W+' '+H,role:'img'});
 s.appendChild(svg('rect',{x:L,y:T,width:W-L-R,height:H-T-B,fill:'none',stroke:'#ccc'}));
 if(tau!==null&&tau>=x0&&tau<=x1)s.appendChild(svg('line',{x1:X(tau),x2:X(tau),y1:T,y2:H-B,stroke:'#c62828','stroke-dasharray':'3,2'}));
 if(lo!==null&&hi!==null&&tau!==null&&k!==null){let d='';for(let j=0;j<=80;j++){const x=x0+(x1-x0)*j/80;
  const y=lo+(hi-lo)/(1+Math.exp(k*(x-tau)));d+=(j?'L':'M')+X(x).toFixed(1)+','+Y(Math.min(Math.max(y,y0),y1)).toFixed(1);}
  s.appendChild(svg('path',{d:d,fill:'none',stroke:'#1565c0','stroke-width':1.5}));}
 ys.forEach((y,j)=>{if(y!==null)s.appendChild(svg('circle',{cx:X(xs[j]).toFixed(1),cy:Y(y).toFixed(1),r:1.8,fill:'#333'}));});
 const txt=(x,y,t,a)=>{const e=svg('text',{x:x,y:y,'font-size':9,'text-anchor':a||'start',fill:'#555'});e.textContent=t;s.appendChild(e);};
 txt(L,H-5,'T '+fmtT(x0));txt(W-R,H-5,fmtT(x1),'end');txt(L-3,T+8,y1.toFixed(1),'end');txt(L-3,H-B,y0.toFixed(1),'end');
 txt(L-3,(H-B+T)/2+3,'nats','end');return s;}
function verdict(i){if(!D.has_step||E.step[i]===null)return 'step vs smooth: not computed';
 return 'step vs smooth: '+(E.step[i]?'step preferred':'smooth preferred');}
function card(i){const c=el('div',{class:'token-example','data-run':D.runs[E.run[i]].name,
 'data-kind':D.kinds[E.kind[i]],'data-band':D.band_keys[E.band[i]],'data-token':String(E.tok[i])});
 c.appendChild(chart(i));const body=el('div',{class:'te-body'});body.appendChild(context(i));
 const facts=el('div',{class:'te-facts'});const tau=E.tau[i];
 facts.appendChild(el('div',{},'tau = '+f(tau,2)+' \u00b1 '+f(E.tau_se[i],2)+' (T \u2248 '+(tau===null?'-':fmtT(tau))+
  ' tokens), k = '+f(E.k[i],2)+', loss '+f(E.hi[i],2)+' \u2192 '+f(E.lo[i],2)+' nats, R\u00b2 '+f(E.r2[i],3)+'; '+verdict(i)));
 facts.appendChild(el('div',{},D.kinds[E.kind[i]]+', band '+D.bands[E.band[i]]+
  (E.fq[i]!==null?', frequency quartile '+E.fq[i]:'')+(E.ws[i]!==null?(E.ws[i]?', word start':', inside a word'):'')+
  '; token '+E.tok[i]+' (sequence '+E.seq[i]+', position '+E.pos[i]+')'));
 const others=[];E.others[i].forEach((o,j)=>{if(j!==E.run[i])others.push(D.runs[j].name+' '+(o?f(o[0],2)+' \u00b1 '+f(o[1],2)+' ('+o[2]+')':'-'));});
 facts.appendChild(el('div',{},'tau in the other runs: '+(others.join('; ')||'none')));
 body.appendChild(facts);c.appendChild(body);return c;}
let shown=PAGE;
function draw(){const list=$('.te-list');list.textContent='';const hits=[];
 for(let i=0;i<N;i++)if(match(E.run[i],E.band[i],E.kind[i],E.fq[i],E.ws[i]))hits.push(i);
 let pop=0;for(const c of D.cells)if(match(c[0],c[1],c[2],c[3],c[4]))pop+=c[5];
 hits.slice(0,shown).forEach((i)=>list.appendChild(card(i)));
 $('.te-status').textContent='Showing '+Math.min(shown,hits.length)+' of '+hits.length+
  ' examples drawn from the '+pop+' tokens of '+sel.run+' in this selection.';
 $('.te-more').style.display=hits.length>shown?'':'none';}
$('.te-intro').textContent=D.sampling+' '+D.decoding+' Chart: measured loss at each checkpoint (dots), '+
 'fitted sigmoid (line), tau (dashed), against ln T. Link to a selection with #run=<name>&kind=<kind>.';
$('.te-more').addEventListener('click',()=>{shown+=PAGE;draw();});
const h=readHash();buildControls(h);draw();
if(h.run||h.kind)root.scrollIntoView();
})();"""
