#!/usr/bin/env python3
"""Markdown table of tools/bench/run_all.sh's results (one JSON object per line: the fields of
`xform bench --json`, torch_competitor.py --json or the parsed Clinic log, plus tag, layers,
framework, status). Standard library only.

usage: make_table.py RESULTS.jsonl [--date YYYY-MM-DD] [--device NAME] [--data TEXT]
"""
import argparse
import json
import sys


def fmt(v, spec):
    return '' if v is None else format(v, spec)


def pct(x):
    if not x:
        return ''
    return '%.1f%%' % (100 * x) if x >= 1e-3 else '%.2g%%' % (100 * x)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('results')
    ap.add_argument('--date', default='')
    ap.add_argument('--device', default='')
    ap.add_argument('--data', default='')
    a = ap.parse_args(argv)
    rows = [json.loads(line) for line in open(a.results) if line.strip()]
    out = []
    if a.device or a.data:
        out.append('Measured on %s (%s); %s.' % (a.device or 'the GPU', a.date, a.data))
        out.append('')
    # xform's bucket row trains on the compile modes' batches: its ratio is the like-for-like one
    # against them (a column only when some depth has such a row).
    bucketed = any(r['tag'].endswith('_bucket') and r['tag'].startswith('xform_') and r['status'] == 'ok' for r in rows)
    head = '| depth | framework | target tokens/s | updates/s | ms/update (p50) | MFU | peak GiB (allocated) | ÷ Clinic | xform ÷ this |'
    rule = '|---|---|---:|---:|---:|---:|---:|---:|---:|'
    if bucketed:
        head += ' xform (bucket) ÷ this |'
        rule += '---:|'
    out.append(head + ' status | measured on |')
    out.append(rule + '---|---|')
    fpts = {}
    for L in sorted({r['layers'] for r in rows}):
        group = [r for r in rows if r['layers'] == L]
        ok = [r for r in group if r['status'] == 'ok' and r.get('target_tokens_per_s')]
        clinic = next((r for r in ok if r['tag'].startswith('clinic')), None)
        xform = next((r for r in ok if r['tag'] == 'xform_%dl' % L), None)
        xbucket = next((r for r in ok if r['tag'] == 'xform_%dl_bucket' % L), None)
        # the Clinic log has no FLOP count: the same data and model give the same FLOPs per target token
        fpt = next((r.get('flops_per_target_token') for r in ok if r.get('flops_per_target_token')), None)
        peak = next((r.get('peak_tflops') for r in ok if r.get('peak_tflops')), 790.0)
        if fpt:
            fpts[L] = fpt
        for r in group:
            tps = r.get('target_tokens_per_s') if r['status'] == 'ok' else None
            ups = r.get('updates_per_s') if tps else None
            ms = r.get('ms_per_update_p50') or (1e3 / ups if ups else None)
            mfu = r.get('mfu')
            if tps and mfu is None and fpt:
                mfu = tps * fpt / 1e12 / peak
            mem = ((r.get('memory') or {}).get('device') or {}).get('peak_allocated_bytes')
            vs_clinic = tps / clinic['target_tokens_per_s'] if tps and clinic else None
            x_over = xform['target_tokens_per_s'] / tps if tps and xform else None
            line = '| %dL-%dL | %s | %s | %s | %s | %s | %s | %s | %s |' % (
                L, L, r['framework'], fmt(tps, ',.0f'), fmt(ups, '.2f'), fmt(ms, '.1f'),
                pct(mfu), fmt(mem / 2**30 if mem else None, '.2f'), fmt(vs_clinic, '.2f'), fmt(x_over, '.2f'))
            if bucketed:
                xb_over = xbucket['target_tokens_per_s'] / tps if tps and xbucket else None
                line += ' %s |' % fmt(xb_over, '.2f')
            out.append(line + ' %s | %s |' % (r['status'], (r.get('date') or a.date)[:10]))
    out.append('')
    per = ', '.join('%dL-%dL %.1f' % (L, L, v / 1e6) for L, v in sorted(fpts.items())) or '?'
    out.append('target tokens/s: non-pad target tokens (</s> included) per second over the timed updates (fairseq\'s wps; '
               'the Clinic fork: median of its 10-update windows after the first two). MFU: model FLOPs (internal/bench/flops.go, '
               'MFLOP per target token here: %s) over %.0f TFLOP/s. "÷ Clinic": this row\'s tokens/s over the Clinic fork\'s; '
               '"xform ÷ this": xform\'s tokens/s over this row\'s%s.' % (
                   per, peak, '; "xform (bucket) ÷ this": the same for xform with --batching bucket, which trains on the '
                   'compile modes\' batches (their like-for-like ratio)' if bucketed else ''))
    print('\n'.join(out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
