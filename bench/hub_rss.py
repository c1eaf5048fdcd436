#!/usr/bin/env python3
# RSS growth of a sidewire binary during a publish flood into distinct channels (issue 8,
# finding 2): 3000 server-API publishes of 60 KB, each to a new channel.
# Usage: bench/hub_rss.py BINARY [EXTRA_YAML]
import subprocess, sys, re, http.client, json, time
binary = sys.argv[1]
open('/tmp/sidewire-hub-rss.yaml','w').write('listen: "127.0.0.1:0"\nadmin_listen: "127.0.0.1:0"\nlog:\n  level: "warn"\n' + (sys.argv[2] if len(sys.argv) > 2 else ''))
p = subprocess.Popen([binary, '--config', '/tmp/sidewire-hub-rss.yaml'], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
line = p.stdout.readline()
admin = re.search(r'admin=(\S+)', line).group(1)
host, port = admin.rsplit(':', 1)
time.sleep(0.5)
def rss():
    for l in open(f'/proc/{p.pid}/status'):
        if l.startswith('VmRSS:'): return int(l.split()[1]) // 1024
before = rss()
payload = json.dumps({"p": "x" * 60000})
conn = http.client.HTTPConnection(host, int(port))
t = time.time()
for i in range(3000):
    body = '{"channel":"flood-%d","data":%s}' % (i, payload)
    conn.request('POST', '/api/publish', body, {'content-type': 'application/json'})
    r = conn.getresponse(); r.read()
elapsed = time.time() - t
time.sleep(0.5)
after = rss()
print(f"{binary}: RSS {before} MB -> {after} MB after 3000 x 60 KB publishes ({elapsed:.1f}s)")
p.kill()
