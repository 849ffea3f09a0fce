// The unmodified e2b JavaScript SDK (npm, pinned) against a Hutch server.
// Run by tests/test_e2b_js.py with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY set
// (an e2b_-shaped key: the JS SDK refuses others before sending anything).
import assert from 'node:assert/strict'
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

test('unknown template is a 404', async () => {
  await assert.rejects(Sandbox.create('no-such-template'), /no-such-template/)
})
