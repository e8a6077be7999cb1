// tus interoperability check, run by crates/http/tests/tus.rs: uploads FILE to a chunkvault
// server with tus-js-client (the reference browser/Node client), aborts the upload part-way,
// then resumes it from the URL the library created, as an application would after a crash.
//
//   node tools/tus-interop.js ENDPOINT FILE CHUNK_SIZE
//
// Prints one JSON line: {"url": ..., "abortedAt": bytes, "resumedFrom": offset}.
'use strict'
const fs = require('fs')
const tus = require('tus-js-client')

const [endpoint, path, chunkSizeArg] = process.argv.slice(2)
if (!endpoint || !path) {
  console.error('usage: node tus-interop.js ENDPOINT FILE [CHUNK_SIZE]')
  process.exit(2)
}
const data = fs.readFileSync(path)
const chunkSize = Number(chunkSizeArg || 4 * 1024 * 1024 + 1234)
const metadata = { filename: 'interop ünï.bin', filetype: 'application/x-tus-test' }

function fail(err) {
  console.error(String(err && err.stack ? err.stack : err))
  process.exit(1)
}

// First attempt: abort (without terminating) once a third of the file is across.
let abortedAt = 0
const first = new tus.Upload(data, {
  endpoint,
  chunkSize,
  metadata,
  retryDelays: null,
  onError: fail,
  onSuccess: () => fail(new Error('the first upload finished before it could be aborted')),
  onProgress: (sent) => {
    if (abortedAt === 0 && sent > data.length / 3) {
      abortedAt = sent
      first.abort(false).then(resume, fail)
    }
  },
})
first.start()

function resume() {
  const url = first.url
  if (!url) fail(new Error('no upload URL after the first attempt'))
  let resumedFrom = -1
  const second = new tus.Upload(data, {
    endpoint,
    uploadUrl: url,
    chunkSize,
    metadata,
    retryDelays: null,
    onError: fail,
    onProgress: (sent) => {
      if (resumedFrom < 0) resumedFrom = sent
    },
    onSuccess: () => {
      console.log(JSON.stringify({ url, finalUrl: second.url, abortedAt, resumedFrom }))
      process.exit(0)
    },
  })
  second.start()
}
