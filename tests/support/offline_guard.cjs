// Preloaded into node (NODE_OPTIONS=--require) by scripts/e2b-conformance, as offline_guard.py is
// into pytest: a socket to a host off this machine is refused before it connects, so a test of
// E2B's JS suite that would reach the internet fails instead of leaving the machine.
'use strict'
const net = require('node:net')

function local(host) {
  if (host === undefined || host === null || host === '') return true // node's default: localhost
  const h = String(host).replace(/^\[|\]$/g, '').toLowerCase()
  return (
    h === 'localhost' ||
    h.endsWith('.localhost') ||
    h === '::1' ||
    /^127\./.test(h) ||
    /^::ffff:127\./.test(h)
  )
}

const connect = net.Socket.prototype.connect
net.Socket.prototype.connect = function (...args) {
  const first = Array.isArray(args[0]) ? args[0][0] : args[0]
  const options = typeof first === 'object' && first !== null ? first : { port: first, host: args[1] }
  if (options.path === undefined && !local(options.host)) {
    const err = new Error(`offline_guard: ${options.host}:${options.port} is off this machine`)
    err.code = 'ECONNREFUSED'
    process.nextTick(() => this.destroy(err))
    return this
  }
  return connect.apply(this, args)
}
