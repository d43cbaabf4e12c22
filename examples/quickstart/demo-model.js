// A tiny stand-in for a model server (FastAPI, vLLM, Triton…), so the quick-start works at once.
//   GET  /v1/models         → the models it serves
//   POST /v1/predict        → {"label":…, "score":…} for {"text": "..."}
//   POST /v1/generate       → a server-sent-event token stream
//   GET  /healthz
import http from 'node:http'

const port = Number(process.env.DEMO_MODEL_PORT ?? 8000)

function json (res, status, body) {
  const text = JSON.stringify(body)
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  })
  res.end(text)
}

function readJson (req, cb) {
  const chunks = []
  req.on('data', (c) => chunks.push(c))
  req.on('end', () => {
    try {
      cb(null, chunks.length === 0 ? {} : JSON.parse(Buffer.concat(chunks).toString('utf8')))
    } catch (err) {
      cb(err)
    }
  })
}

const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0]
  if (req.method === 'GET' && path === '/healthz') return json(res, 200, { status: 'ok' })
  if (req.method === 'GET' && path === '/v1/models') {
    return json(res, 200, {
      models: [{ id: 'sentiment-mini', kind: 'classifier' }, { id: 'echo-lm', kind: 'generator' }],
    })
  }
  if (req.method === 'POST' && path === '/v1/predict') {
    return readJson(req, (err, body) => {
      if (err) return json(res, 400, { error: 'invalid JSON' })
      const text = String(body.text ?? '')
      const positive = (text.match(/\b(good|great|love|fast|excellent)\b/gi) ?? []).length
      const negative = (text.match(/\b(bad|slow|hate|broken|awful)\b/gi) ?? []).length
      const score = (positive + 1) / (positive + negative + 2)
      json(res, 200, {
        model: 'sentiment-mini',
        label: score >= 0.5 ? 'positive' : 'negative',
        score: Number(score.toFixed(3)),
        request_id: req.headers['x-request-id'],
      })
    })
  }
  if (req.method === 'POST' && path === '/v1/generate') {
    return readJson(req, (err, body) => {
      if (err) return json(res, 400, { error: 'invalid JSON' })
      const words = String(body.prompt ?? 'hello from the demo model').split(/\s+/).filter(Boolean)
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
      let i = 0
      const timer = setInterval(() => {
        if (i < words.length) {
          res.write(`data: ${JSON.stringify({ token: words[i++] })}\n\n`)
        } else {
          clearInterval(timer)
          res.end('data: [DONE]\n\n')
        }
      }, 100)
      res.on('close', () => clearInterval(timer))
    })
  }
  json(res, 404, { error: 'not found' })
})

server.listen(
  port,
  '127.0.0.1',
  () => console.log(JSON.stringify({ msg: 'demo model listening', port })),
)
process.on('SIGTERM', () => server.close(() => process.exit(0)))
process.on('SIGINT', () => server.close(() => process.exit(0)))
