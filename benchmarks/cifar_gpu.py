"""Train the CIFAR-10 benchmarks' runs side by side on one lent GPU, sized to a wall-clock budget.

A lent GPU comes for minutes, so the training of `resrep_cifar.py` and `distill_cifar.py` runs there with
`--train-only` (one process per variant or method, all at once), and each run is finished here later by the
same benchmark without `--train-only`: it resumes from the final checkpoint, merges, exports, evaluates in
onnxruntime and measures latency on this machine.

The epoch count is not guessed: a probe runs every job for 2 short epochs side by side, reads the seconds per
step from the checkpoints' timing, and the budget then fixes one epoch count for every job (the same epochs
and schedule for all variants, as the benchmarks require). A job still running at the deadline is stopped;
its checkpoint of the last finished epoch stays, and the benchmark resumes it wherever it runs next.

    python benchmarks/cifar_gpu.py --budget 420 --out $OUT          # on the GPU machine
    tar xf resrep_cifar_work.tar -C benchmarks/results && python benchmarks/resrep_cifar.py --epochs E
    tar xf distill_cifar_work.tar -C benchmarks/results && python benchmarks/distill_cifar.py --epochs E --seeds 0

Writes into --out: cifar_gpu.json (probe, epochs, per-job times and exit codes, GPU and library versions),
resrep_cifar_work.tar and distill_cifar_work.tar (each run's last.pt), and cifar_gpu_logs.tar (every job's log).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS_PER_EPOCH = 391   # ceil(50000 / 128): the CIFAR-10 train loader of both benchmarks


def jobs(resrep_variants, distill_methods, seeds, latency_variants=()):
    out = [("resrep_cifar", ["--variants", v], v) for v in resrep_variants]
    out += [("latency_cifar", ["--variants", v], v) for v in latency_variants]   # needs its --plan run first
    out += [("distill_cifar", ["--methods", m, "--seeds", str(s)], f"{m}_s{s}") for m in distill_methods
            for s in seeds]
    return out


def launch(job, workroot, epochs, device, max_steps, logdir):
    script, args, key = job
    cmd = [sys.executable, os.path.join(HERE, f"{script}.py"), *args, "--train-only", "--epochs", str(epochs),
           "--device", device, "--threads", "1", "--workdir", os.path.join(workroot, f"{script}_work")]
    if max_steps:
        cmd += ["--max-steps-per-epoch", str(max_steps)]
    log = open(os.path.join(logdir, f"{script}.{key}.log"), "w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log


def run_all(joblist, workroot, epochs, device, max_steps, logdir, deadline):
    procs = {job[2]: (job, *launch(job, workroot, epochs, device, max_steps, logdir)) for job in joblist}
    started, ended = time.time(), {}
    while len(ended) < len(procs):
        for key, (job, proc, log) in procs.items():
            if key not in ended and proc.poll() is not None:
                ended[key] = {"rc": proc.returncode, "seconds": round(time.time() - started, 1)}
                log.close()
        if time.time() > deadline:
            for key, (job, proc, log) in procs.items():
                if key not in ended:
                    proc.kill()
                    proc.wait()
                    log.close()
                    ended[key] = {"rc": "stopped at the deadline", "seconds": round(time.time() - started, 1)}
        time.sleep(1)
    return ended


def timing(workroot, job):
    from fxcompress.train.checkpoint import read_checkpoint
    script, _, key = job
    path = os.path.join(workroot, f"{script}_work", key, "last.pt")
    return read_checkpoint(path).get("timing", []) if os.path.isfile(path) else []


def log_tail(logdir, job, lines=15):
    with open(os.path.join(logdir, f"{job[0]}.{job[2]}.log")) as f:
        return "".join(f.readlines()[-lines:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=420, help="seconds for the whole training phase")
    ap.add_argument("--safety", type=float, default=0.8, help="fraction of the budget the estimate may fill")
    ap.add_argument("--max-epochs", type=int, default=200)
    ap.add_argument("--probe-steps", type=int, default=60)
    ap.add_argument("--resrep-variants", nargs="*", default=["resrep_mean", "resrep_sum", "magnitude", "resrep_mean_kd", "resrep_sum_kd", "magnitude_kd"])
    ap.add_argument("--distill-methods", nargs="*",
                    default=["scratch", "kd", "irg", "vid", "kd_irg", "pruned", "pruned_kd"])
    ap.add_argument("--latency-variants", nargs="*", default=[],
                    help="latency_cifar.py students (their --plan must have run here and its work dir be carried)")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--epochs", type=int, default=None, help="skip the probe and train this many epochs")
    ap.add_argument("--max-steps-per-epoch", type=int, default=None, help=argparse.SUPPRESS)   # smoke tests
    ap.add_argument("--steps-per-epoch", type=int, default=STEPS_PER_EPOCH, help=argparse.SUPPRESS)
    ap.add_argument("--workroot", default=os.path.join(HERE, "results"))
    ap.add_argument("--out", default=os.environ.get("OUT", "cifar_gpu_out"))
    args = ap.parse_args(argv)
    import torch
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    logdir = os.path.join(args.workroot, "cifar_gpu_logs")   # $OUT takes few files: logs go back as one tar
    os.makedirs(logdir, exist_ok=True)
    sys.path.insert(0, os.path.dirname(HERE))
    from fxcompress.data import cifar10
    cifar10(split="train"), cifar10(split="test")    # decode once, cached for every job
    print(f"data decoded in {time.time() - t0:.0f} s", flush=True)
    joblist = jobs(args.resrep_variants, args.distill_methods, args.seeds, args.latency_variants)
    report = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "cpus": os.cpu_count(), "jobs": [j[2] for j in joblist]}
    deadline = t0 + args.budget
    if args.epochs is None:
        probe_root = os.path.join(args.workroot, "cifar_gpu_probe")
        probe = run_all(joblist, probe_root, 2, args.device, args.probe_steps, logdir, deadline)
        estimates = {}
        for job in joblist:
            t = timing(probe_root, job)
            if len(t) < 2:
                print(f"probe of {job[2]} failed ({probe[job[2]]['rc']}):\n{log_tail(logdir, job)}", flush=True)
                continue
            per_step = t[1]["train_seconds"] / t[1]["steps"]
            estimates[job[2]] = per_step * min(args.steps_per_epoch, args.max_steps_per_epoch or 10**9) \
                + t[1]["val_seconds"]
        joblist = [j for j in joblist if j[2] in estimates]
        if not joblist:
            report["error"] = "every probe failed"
            json.dump(report, open(os.path.join(args.out, "cifar_gpu.json"), "w"), indent=1)
            return 1
        remaining = deadline - time.time() - 30     # start-up of the jobs (imports, tracing)
        epochs = max(1, min(args.max_epochs, math.floor(args.safety * remaining / max(estimates.values()))))
        report.update(probe_seconds=round(time.time() - t0, 1), epoch_seconds_estimate=estimates)
        print(f"probe: {json.dumps(estimates)}; {epochs} epochs in {remaining:.0f} s", flush=True)
    else:
        epochs = args.epochs
    report["epochs"] = epochs
    ended = run_all(joblist, args.workroot, epochs, args.device, args.max_steps_per_epoch, logdir, deadline)
    report["runs"] = {}
    for job in joblist:
        t = timing(args.workroot, job)
        report["runs"][job[2]] = {**ended[job[2]], "epochs_done": len(t),
                                  "train_seconds": round(sum(e["train_seconds"] + e["val_seconds"] for e in t), 1)}
        if ended[job[2]]["rc"] != 0:
            print(f"{job[2]}: {ended[job[2]]['rc']}\n{log_tail(logdir, job)}", flush=True)
    for script in ("resrep_cifar", "distill_cifar", "latency_cifar"):
        work = os.path.join(args.workroot, f"{script}_work")
        if os.path.isdir(work):
            with tarfile.open(os.path.join(args.out, f"{script}_work.tar"), "w") as tar:
                for key in os.listdir(work):
                    if os.path.isfile(os.path.join(work, key, "last.pt")):
                        tar.add(os.path.join(work, key, "last.pt"), arcname=f"{script}_work/{key}/last.pt")
    with tarfile.open(os.path.join(args.out, "cifar_gpu_logs.tar"), "w") as tar:
        tar.add(logdir, arcname="cifar_gpu_logs")
    report["seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(args.out, "cifar_gpu.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report["runs"], indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
