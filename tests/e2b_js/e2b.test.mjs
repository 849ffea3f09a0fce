// The unmodified e2b JavaScript SDK (npm, pinned) against a Hutch server.
// Run by tests/test_e2b_js.py with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set
// (an e2b_-shaped key: the JS SDK refuses others before sending anything).
import assert from 'node:assert/strict'
import http from 'node:http'
import { test } from 'node:test'
import { CommandExitError, NotFoundError, Sandbox } from 'e2b'

test('create, list by metadata, run, files, kill', async () => {
  const sbx = await Sandbox.create({ metadata: { suite: 'js' }, envs: { WHO: 'node' } })
  try {
    const r = await sbx.commands.run('echo hi $WHO; echo err >&2')
    assert.equal(r.stdout, 'hi node\n')
    assert.equal(r.stderr, 'err\n')
    assert.equal(r.exitCode, 0)

    await assert.rejects(sbx.commands.run('exit 4'), (e) => e instanceof CommandExitError && e.exitCode === 4)

    const chunks = []
    await sbx.commands.run('for i in 1 2 3; do echo $i; done', { onStdout: (d) => chunks.push(d) })
    assert.equal(chunks.join(''), '1\n2\n3\n')

    const bg = await sbx.commands.run('sleep 600', { background: true })
    assert.ok((await sbx.commands.list()).some((p) => p.pid === bg.pid))
    assert.equal(await sbx.commands.kill(bg.pid), true)

    await sbx.files.write('/tmp/js/a.txt', 'from node')
    assert.equal(await sbx.files.read('/tmp/js/a.txt'), 'from node')
    assert.deepEqual((await sbx.files.list('/tmp/js')).map((e) => e.name), ['a.txt'])
    assert.equal(await sbx.files.exists('/tmp/js/nope'), false)
    await assert.rejects(sbx.files.read('/tmp/js/nope'), NotFoundError)

    const listed = await Sandbox.list({ query: { metadata: { suite: 'js' } } }).nextItems()
    assert.deepEqual(listed.map((s) => s.sandboxId), [sbx.sandboxId])
    assert.equal((await sbx.getInfo()).metadata.suite, 'js')
  } finally {
    await sbx.kill()
  }
  await assert.rejects(Sandbox.getInfo(sbx.sandboxId), NotFoundError)
})

test('a sandbox killed while a command runs: the SDK says it was killed', async () => {
  // Hutch cuts the command's stream as E2B's proxy does; the SDK then probes the sandbox.
  const sbx = await Sandbox.create()
  const cmd = await sbx.commands.run('sleep 60', { background: true })
  await sbx.kill()
  const err = await cmd.wait().catch((e) => e)
  assert.match(String(err && err.message), /sandbox was killed or reached its end of life/)
})

test('unknown template is a 404', async () => {
  await assert.rejects(Sandbox.create('no-such-template'), /no-such-template/)
})

// GET http://{host}/ sent to 127.0.0.1 (node's http lets us set Host; no *.localhost DNS).
function getVia(host, token) {
  const [name, port] = host.split(':')
  const headers = { host: `${name}:${port}` }
  if (token !== undefined) headers['e2b-traffic-access-token'] = token
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: Number(port), path: '/', headers }, (res) => {
      let body = ''
      res.on('data', (d) => (body += d))
      res.on('end', () => resolve({ status: res.statusCode, body }))
    })
    req.on('error', reject)
  })
}

test('stdin, connect, pty, watch, signed URLs, getHost, pause and resume', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 120_000 })
  try {
    const cat = await sbx.commands.run('cat', { background: true, stdin: true })
    const again = await sbx.commands.connect(cat.pid) // background + connect
    await sbx.commands.sendStdin(cat.pid, 'typed\n')
    await sbx.commands.closeStdin(cat.pid) // cat sees EOF and ends
    const done = await again.wait()
    assert.equal(done.stdout, 'typed\n')

    let seen = ''
    const term = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => (seen += new TextDecoder().decode(d)) })
    await sbx.pty.sendInput(term.pid, new TextEncoder().encode('echo pty-$((6*7)); exit\n'))
    await term.wait().catch(() => {})
    assert.match(seen, /pty-42/)

    const events = []
    const watcher = await sbx.files.watchDir('/tmp', (e) => events.push(e.name))
    await sbx.files.write('/tmp/watched.txt', 'x')
    for (let i = 0; i < 50 && !events.includes('watched.txt'); i++) await new Promise((r) => setTimeout(r, 100))
    await watcher.stop()
    assert.ok(events.includes('watched.txt'), `events: ${events}`)

    const url = await sbx.downloadUrl('/tmp/watched.txt', { useSignatureExpiration: 60 })
    assert.equal(await (await fetch(url)).text(), "x")

    await sbx.commands.run('python3 -m http.server 8080 --directory /tmp', { background: true })
    const host = sbx.getHost(8080)
    assert.ok(host.startsWith(`8080-${sbx.sandboxId}.`), host)
    let r = await getVia(host, sbx.trafficAccessToken)
    for (let i = 0; i < 100 && r.status === 502; i++) {
      await new Promise((res) => setTimeout(res, 200))
      r = await getVia(host, sbx.trafficAccessToken)
    }
    assert.equal(r.status, 200)
    assert.match(r.body, /watched\.txt/)
    assert.equal((await getVia(host)).status, 404) // no token: as an unknown sandbox

    assert.equal(await sbx.pause(), true)
    assert.equal((await sbx.getInfo()).state, 'paused')
    const resumed = await Sandbox.connect(sbx.sandboxId, { timeoutMs: 60_000 })
    assert.equal((await resumed.commands.run('cat /tmp/watched.txt')).stdout, 'x')
    await resumed.setTimeout(30_000)
    const end = (await resumed.getInfo()).endAt.getTime()
    assert.ok(end - Date.now() <= 31_000, `endAt ${end - Date.now()} ms away`)
  } finally {
    await sbx.kill()
  }
})
