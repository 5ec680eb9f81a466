"""Reference data for xform train / xform profile, made by the Transformer-Clinic fork's own code.

usage (driver):  train_parity.py --clinic CLINIC --out OUT [--fixtures fixtures/clinic]
Internally the driver re-runs this file as workers, one process per model, because the fork keeps
the Admin profile file as a module-global handle (one adaptive model per process) and its profiling
path ends in exit().

Everything runs on the CPU in float32 with one thread and dropout, attention dropout and relu dropout
set to 0, so the numbers are deterministic. Writes into OUT:
  meta.json           versions, the exact argument list of every run, and per update: lr, loss and
                      nll_loss (bits, as logged), sample_size, ntokens, nsentences, gnorm
  batches.npz         the first 20 training batches of epoch 1 (b<k>/src_tokens, src_lengths,
                      prev_output_tokens, target, id, ntokens), and the sample-id order of every batch
                      of epochs 1 and 2 (epoch<e>/ids = concatenated ids, epoch<e>/sizes = batch sizes)
                      plus frozen/ids, frozen/sizes (the unshuffled batch list)
  profile.ratio.init  the fork's adaptive-profiling output for ckpt_u1's weights with every
                      *_ratio_change reset to 1, dropout 0, first batch of epoch 1
  runs_admin.npz      for each Admin run: <run>/state<k>/<param> = named_parameters after k updates
                      (k = 0..10; state0 = starting weights), <run>/grad1/<param> = the gradient the
                      optimizer saw at update 1 (divided by sample_size, after clipping)
  runs_default.npz    the same for the default-init (Post-LN and Pre-LN) runs
  log.txt             the workers' stdout and stderr
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NUPD = 10       # optimizer updates per run
NBATCH = 20     # training batches dumped (update-freq 2 needs 2 per update)

# Recipe of fixtures/clinic (runs/*/commands.txt) with every dropout set to 0.
COMMON = [
    '-s', 'src', '-t', 'tgt', '--arch', 'transformer_iwslt_de_en',
    '--criterion', 'label_smoothed_cross_entropy', '--label-smoothing', '0.1',
    '--max-tokens', '2048', '--seed', '1111', '--num-workers', '0', '--cpu',
    '--dropout', '0', '--attention-dropout', '0', '--relu-dropout', '0',
    '--encoder-layers', '3', '--decoder-layers', '3', '--encoder-embed-dim', '32', '--decoder-embed-dim', '32',
    '--encoder-ffn-embed-dim', '64', '--decoder-ffn-embed-dim', '64',
    '--encoder-attention-heads', '4', '--decoder-attention-heads', '4', '--share-all-embeddings',
    '--lr-scheduler', 'inverse_sqrt', '--log-format', 'simple', '--log-interval', '1',
    '--restore-file', 'does-not-exist.pt', '--no-save',
]

# name -> (init source, extra args). 'ckpt_u1' = fixtures/clinic/runs/a_admin/ckpt_u1 weights;
# 'seed' = the fork's own default initialisation after the seeds train.py sets.
RUNS = {
    # the a_admin recipe itself (RAdam makes no update for t<6, so updates 6..10 move the weights)
    'admin_radam': ('ckpt_u1', ['--init-type', 'adaptive', '--optimizer', 'radam', '--adam-betas', '(0.9,0.98)',
                                '--lr', '3e-3', '--warmup-init-lr', '1e-7', '--warmup-updates', '100',
                                '--weight-decay', '0.0', '--clip-norm', '0.0']),
    # fairseq's adam (AdamW-style decay), short warmup so updates 4..10 use the inverse-sqrt branch
    'admin_adam': ('ckpt_u1', ['--init-type', 'adaptive', '--optimizer', 'adam', '--adam-betas', '(0.9,0.98)',
                               '--lr', '3e-3', '--warmup-init-lr', '1e-7', '--warmup-updates', '4',
                               '--weight-decay', '0.0001', '--clip-norm', '0.0']),
    # RAdam with decoupled weight decay (changes weights and ω from update 1) and active clipping
    'admin_radam_wd_clip': ('ckpt_u1', ['--init-type', 'adaptive', '--optimizer', 'radam',
                                        '--adam-betas', '(0.9,0.98)', '--lr', '1e-3', '--warmup-init-lr', '1e-5',
                                        '--warmup-updates', '4', '--weight-decay', '0.01', '--clip-norm', '0.5']),
    # vanilla Post-LN (b_postln args), Adam, two batches per update
    'postln_adam_uf2': ('seed', ['--init-type', 'default', '--optimizer', 'adam', '--adam-betas', '(0.9,0.98)',
                                 '--lr', '1e-3', '--warmup-init-lr', '1e-7', '--warmup-updates', '4',
                                 '--weight-decay', '0.0', '--clip-norm', '0.0', '--update-freq', '2']),
    # Pre-LN (c_preln args), RAdam
    'preln_radam': ('seed', ['--init-type', 'default', '--encoder-normalize-before', '--decoder-normalize-before',
                             '--optimizer', 'radam', '--adam-betas', '(0.9,0.98)', '--lr', '3e-3',
                             '--warmup-init-lr', '1e-7', '--warmup-updates', '4', '--weight-decay', '0.0',
                             '--clip-norm', '0.0']),
}
PROFILE_ARGS = ['--init-type', 'adaptive-profiling', '--optimizer', 'radam', '--adam-betas', '(0.9,0.98)',
                '--lr', '3e-3', '--warmup-init-lr', '1e-7', '--warmup-updates', '100', '--weight-decay', '0.0',
                '--clip-norm', '0.0']


# ----------------------------------------------------------------------------------------- worker side

def setup(ns, extra):
    """Parse the fork's training args and build task, model, criterion, trainer and epoch iterator the
    way fairseq_cli/train.py does (same seeding order, so a default init equals the real run's)."""
    import numpy as np
    import torch
    torch.set_num_threads(1)
    argv = [ns.data] + COMMON + ['--user-dir', os.path.join(ns.clinic, 'radam_fairseq'),
                                 '--save-dir', os.path.join(os.getcwd(), 'ckpt')] + extra
    sys.argv = ['train.py'] + argv  # get_parser reads --user-dir from sys.argv
    from fairseq import options, tasks, utils
    from fairseq.trainer import Trainer
    from fairseq import checkpoint_utils
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, input_args=argv)
    utils.import_user_module(args)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    task = tasks.setup_task(args)
    for split in args.valid_subset.split(','):
        task.load_dataset(split, combine=False, epoch=0)
    model = task.build_model(args)
    criterion = task.build_criterion(args)
    trainer = Trainer(args, task, model, criterion)
    extra_state, epoch_itr = checkpoint_utils.load_checkpoint(args, trainer)
    assert extra_state is None, 'restore file unexpectedly exists'
    return args, task, model, trainer, epoch_itr, argv


def load_weights(model, path, ratios_to_one=False):
    import torch
    try:
        raw = torch.load(path, map_location='cpu', weights_only=False)
    except TypeError:  # torch < 1.13 has no weights_only
        raw = torch.load(path, map_location='cpu')
    sd = raw['model']
    if ratios_to_one:
        sd = {k: (torch.ones_like(v) if 'ratio_change' in k else v) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)


def snapshot(model, grads=False):
    out = {}
    for name, p in model.named_parameters():
        t = p.grad if grads else p.data
        if t is None:
            continue
        out[name] = t.detach().float().cpu().numpy().copy()
    return out


def batch_arrays(sample):
    net = sample['net_input']
    return {
        'src_tokens': net['src_tokens'].numpy(), 'src_lengths': net['src_lengths'].numpy(),
        'prev_output_tokens': net['prev_output_tokens'].numpy(), 'target': sample['target'].numpy(),
        'id': sample['id'].numpy(), 'ntokens': __import__('numpy').asarray(sample['ntokens']),
    }


def worker_batches(ns):
    import numpy as np
    args, task, model, trainer, epoch_itr, argv = setup(ns, RUNS['admin_radam'][1])
    arrays = {}
    frozen = [np.asarray(b, dtype=np.int64) for b in epoch_itr.frozen_batches]
    arrays['frozen/ids'] = np.concatenate(frozen)
    arrays['frozen/sizes'] = np.asarray([len(b) for b in frozen], dtype=np.int64)
    for epoch in (1, 2):
        itr = epoch_itr.next_epoch_itr(fix_batches_to_gpus=False, shuffle=True)
        assert epoch_itr.epoch == epoch, epoch_itr.epoch
        ids, sizes = [], []
        for k, sample in enumerate(itr):
            if epoch == 1 and k < NBATCH:
                for key, v in batch_arrays(sample).items():
                    arrays['b%d/%s' % (k, key)] = v
            ids.append(sample['id'].numpy())
            sizes.append(len(sample['id']))
        arrays['epoch%d/ids' % epoch] = np.concatenate(ids)
        arrays['epoch%d/sizes' % epoch] = np.asarray(sizes, dtype=np.int64)
    np.savez(os.path.join(ns.work, 'batches.npz'), **arrays)
    json.dump({'argv': argv, 'num_batches': {str(e): int(len(arrays['epoch%d/sizes' % e])) for e in (1, 2)},
               'frozen_batches': int(len(frozen))}, open(os.path.join(ns.work, 'batches.json'), 'w'), indent=1)


def worker_run(ns):
    import numpy as np
    from fairseq.data import iterators
    init, extra = RUNS[ns.run]
    args, task, model, trainer, epoch_itr, argv = setup(ns, extra)
    if init == 'ckpt_u1':
        load_weights(model, ns.ckpt_u1)
    arrays = {}
    for name, v in snapshot(model).items():
        arrays['%s/state0/%s' % (ns.run, name)] = v
    update_freq = args.update_freq[0]
    itr = epoch_itr.next_epoch_itr(fix_batches_to_gpus=False, shuffle=True)
    itr = iterators.GroupedIterator(itr, update_freq)
    steps = []
    for k, samples in enumerate(itr):
        if k >= NUPD:
            break
        lr = trainer.get_lr()
        log = trainer.train_step(samples)
        assert log is not None, 'update %d skipped' % (k + 1)
        steps.append({
            'update': k + 1, 'lr': float(lr), 'loss': float(log['loss']), 'nll_loss': float(log['nll_loss']),
            'sample_size': int(log['sample_size']), 'ntokens': int(log['ntokens']),
            'nsentences': int(log['nsentences']), 'gnorm': float(trainer._prev_grad_norm),
            'batch_ids': [int(x) for s in samples for x in s['id']],
            'lr_after': float(trainer.get_lr()), 'num_updates': int(trainer.get_num_updates()),
        })
        if k == 0:
            for name, v in snapshot(model, grads=True).items():
                arrays['%s/grad1/%s' % (ns.run, name)] = v
        for name, v in snapshot(model).items():
            arrays['%s/state%d/%s' % (ns.run, k + 1, name)] = v
        print('| %s update %d lr %.9g loss %.6f nll %.6f gnorm %.6f' % (
            ns.run, k + 1, lr, log['loss'], log['nll_loss'], float(trainer._prev_grad_norm)), flush=True)
    np.savez(os.path.join(ns.work, ns.run + '.npz'), **arrays)
    json.dump({'argv': argv, 'init': init, 'update_freq': update_freq, 'steps': steps,
               'params': {n: list(p.shape) for n, p in model.named_parameters()}},
              open(os.path.join(ns.work, ns.run + '.json'), 'w'), indent=1)


def worker_profile(ns):
    # cwd is a fresh directory: the fork opens ./profile.ratio.init for writing when the first layer is built.
    args, task, model, trainer, epoch_itr, argv = setup(ns, PROFILE_ARGS)
    load_weights(model, ns.ckpt_u1, ratios_to_one=True)
    itr = epoch_itr.next_epoch_itr(fix_batches_to_gpus=False, shuffle=True)
    first = next(iter(itr))
    json.dump({'argv': argv, 'batch_ids': [int(x) for x in first['id']]},
              open(os.path.join(ns.work, 'profile.json'), 'w'), indent=1)
    trainer.train_step([first])  # task.train_step calls exit() after the backward
    raise SystemExit('adaptive-profiling did not exit')


# ----------------------------------------------------------------------------------------- driver side

def run_worker(ns, mode, cwd, log, run=None):
    env = dict(os.environ)
    env['CUDA_VISIBLE_DEVICES'] = ''          # CPU only: no apex FusedAdam, deterministic fp32
    env['OMP_NUM_THREADS'] = '1'
    env['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'] = '1'
    env['PYTHONPATH'] = os.path.join(ns.clinic, 'fairseq') + os.pathsep + env.get('PYTHONPATH', '')
    cmd = [sys.executable, os.path.abspath(__file__), '--worker', mode, '--clinic', ns.clinic, '--data', ns.data,
           '--ckpt-u1', ns.ckpt_u1, '--work', ns.work]
    if run:
        cmd += ['--run', run]
    log.write('\n==== %s %s (cwd %s)\n' % (mode, run or '', cwd))
    log.flush()
    p = subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if p.returncode != 0:
        raise SystemExit('worker %s %s failed (rc %d); see %s' % (mode, run or '', p.returncode, log.name))


def driver(ns):
    import numpy as np
    import torch
    os.makedirs(ns.out, exist_ok=True)
    ns.work = os.path.join(ns.out, '.work')
    shutil.rmtree(ns.work, ignore_errors=True)
    os.makedirs(ns.work)
    meta = {'tool': 'tools/reference/train_parity.py', 'torch': torch.__version__, 'numpy': np.__version__,
            'python': sys.version.split()[0], 'clinic': ns.clinic, 'device': 'cpu', 'threads': 1,
            'updates_per_run': NUPD, 'common_args': COMMON, 'runs': {}}
    try:
        meta['clinic_commit'] = subprocess.run(['git', '-C', ns.clinic, 'rev-parse', 'HEAD'], capture_output=True,
                                               text=True).stdout.strip()
    except OSError:
        pass
    with open(os.path.join(ns.out, 'log.txt'), 'w') as log:
        d = os.path.join(ns.work, 'cwd_batches'); os.makedirs(d)
        shutil.copy(ns.profile, os.path.join(d, 'profile.ratio.init'))
        run_worker(ns, 'batches', d, log)
        meta['batches'] = json.load(open(os.path.join(ns.work, 'batches.json')))
        shutil.move(os.path.join(ns.work, 'batches.npz'), os.path.join(ns.out, 'batches.npz'))

        d = os.path.join(ns.work, 'cwd_profile'); os.makedirs(d)
        run_worker(ns, 'profile', d, log)
        shutil.copy(os.path.join(d, 'profile.ratio.init'), os.path.join(ns.out, 'profile.ratio.init'))
        meta['profile'] = json.load(open(os.path.join(ns.work, 'profile.json')))

        groups = {'runs_admin.npz': {}, 'runs_default.npz': {}}
        for name, (init, _) in RUNS.items():
            d = os.path.join(ns.work, 'cwd_' + name); os.makedirs(d)
            shutil.copy(ns.profile, os.path.join(d, 'profile.ratio.init'))  # read by adaptive constructors
            run_worker(ns, 'run', d, log, run=name)
            meta['runs'][name] = json.load(open(os.path.join(ns.work, name + '.json')))
            g = 'runs_admin.npz' if init == 'ckpt_u1' else 'runs_default.npz'
            with np.load(os.path.join(ns.work, name + '.npz')) as z:
                groups[g].update({k: z[k] for k in z.files})
        for fname, arrays in groups.items():
            np.savez(os.path.join(ns.out, fname), **arrays)
    json.dump(meta, open(os.path.join(ns.out, 'meta.json'), 'w'), indent=1)
    shutil.rmtree(ns.work)
    for f in sorted(os.listdir(ns.out)):
        print('%10d %s' % (os.path.getsize(os.path.join(ns.out, f)), f))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--clinic', required=True, help='Transformer-Clinic checkout (fairseq/, radam_fairseq/)')
    ap.add_argument('--out', help='output directory (driver)')
    ap.add_argument('--fixtures', default=os.path.join(HERE, '..', '..', 'fixtures', 'clinic'))
    ap.add_argument('--worker', choices=['batches', 'run', 'profile'])
    ap.add_argument('--run', choices=sorted(RUNS))
    ap.add_argument('--data'); ap.add_argument('--ckpt-u1'); ap.add_argument('--work')
    ns = ap.parse_args()
    ns.clinic = os.path.abspath(ns.clinic)
    if ns.worker:
        {'batches': worker_batches, 'run': worker_run, 'profile': worker_profile}[ns.worker](ns)
        return
    if not ns.out:
        ap.error('--out is required')
    fx = os.path.abspath(ns.fixtures)
    ns.out = os.path.abspath(ns.out)
    ns.data = os.path.join(fx, 'data-bin')
    ns.ckpt_u1 = os.path.join(fx, 'runs', 'a_admin', 'ckpt_u1', 'checkpoint_last.pt')
    ns.profile = os.path.join(fx, 'runs', 'a_admin', 'profile.ratio.init')
    for p in (ns.data, ns.ckpt_u1, ns.profile, os.path.join(ns.clinic, 'radam_fairseq', 'radam.py')):
        if not os.path.exists(p):
            raise SystemExit('missing ' + p)
    driver(ns)


if __name__ == '__main__':
    main()
