#!/usr/bin/env python3
# A/B of daemon builds by the kernel's per-program statistics, for one datapath change at a
# time: every build runs at once, each guarding its own child cgroup and pin directory, and
# rounds of N connects (client pinned to CPU 0) alternate between them, so that the machine's
# drift hits all alike. Prints the median ns per connect of each program type (9 = sock_release,
# connect = connect4, sock_ops) and their total. Root; loopback only (127.0.0.9:45678).
# Needs target/release/connector (cargo build --release -p resilience-tests --bins).
# usage: bench/ab.py named|observed ROUNDS N BIN...   e.g. bench/ab.py observed 12 4000 old new
import os, sys, subprocess, time, glob, statistics, socket, threading, shutil
mode, rounds, n, bins = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(('127.0.0.9', 45678)); srv.listen(4096)
def acc():
    while True:
        c, _ = srv.accept(); c.close()
threading.Thread(target=acc, daemon=True).start()
pol = '/tmp/dp/ab.toml'
open(pol, 'w').write('[[destination]]\nname = "svc"\nmatch = ["127.0.0.9:45678"]\n' if mode == 'named'
                     else '[[destination]]\nname = "x"\nmatch = ["127.0.0.8:1"]\n')
ds = []
for i, b in enumerate(bins):
    cg = f'/sys/fs/cgroup/unified/ab{i}'; os.makedirs(cg, exist_ok=True)
    pin = f'/sys/fs/bpf/ab{i}'; shutil.rmtree(pin, ignore_errors=True)
    p = subprocess.Popen([b, 'run', '--config', pol, '--cgroup', cg, '--pin-dir', pin, '--socket', f'/tmp/dp/ab{i}.sock'],
                         stdout=open(f'/tmp/dp/ab{i}.log', 'w'), stderr=subprocess.STDOUT)
    ds.append((p, cg))
time.sleep(2)
open('/proc/sys/kernel/bpf_stats_enabled', 'w').write('1')
def snap(pid):
    r = {}
    for f in glob.glob(f'/proc/{pid}/fdinfo/*'):
        try: t = open(f).read()
        except OSError: continue
        kv = dict(l.split(':\t', 1) for l in t.splitlines() if ':\t' in l)
        if 'prog_type' in kv and 'run_time_ns' in kv:
            k = {'18': 'connect', '13': 'sock_ops', '2': 'release'}.get(kv['prog_type'].strip(), kv['prog_type'].strip())
            a = r.setdefault(k, [0, 0]); a[0] += int(kv['run_time_ns']); a[1] += int(kv['run_cnt'])
    return r
conn = '/work/main/target/release/connector'
res = {i: {} for i in range(len(bins))}
for (p, cg) in ds:
    subprocess.run([conn, '--cgroup', cg, '--raw', '--cpu', '0', '--count', '2000', '127.0.0.9:45678'], stdout=subprocess.DEVNULL)
for r in range(rounds):
    order = list(range(len(bins))); order = order[r % len(order):] + order[:r % len(order)]
    for i in order:
        p, cg = ds[i]
        a = snap(p.pid)
        subprocess.run([conn, '--cgroup', cg, '--raw', '--cpu', '0', '--count', str(n), '127.0.0.9:45678'], stdout=subprocess.DEVNULL)
        b = snap(p.pid)
        tot = 0
        for k in b:
            d = (b[k][0] - a[k][0]) / n; tot += d
            res[i].setdefault(k, []).append(d)
        res[i].setdefault('total', []).append(tot)
open('/proc/sys/kernel/bpf_stats_enabled', 'w').write('0')
for (p, cg) in ds:
    p.terminate(); p.wait()
    os.rmdir(cg)
for i, b in enumerate(bins):
    print(f'{os.path.basename(b):8} ' + '  '.join(f'{k} {statistics.median(v):5.0f}' for k, v in sorted(res[i].items())))
