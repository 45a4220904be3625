// A real OAuth 2.0 / OpenID Connect server for cmdop's login tests: oidc-provider (pinned in
// package.json) with the device flow (RFC 8628), revocation (RFC 7009) and refresh-token
// rotation, serving HTTPS on 127.0.0.1 with a throw-away certificate the test hands in.
//
//   node server.js CERT.pem KEY.pem        (env CMDOP_TEST_RELAY: advertised as `cmdop_relay`;
//                                            CMDOP_TEST_INTERVAL: the polling interval, seconds)
//
// Optional, all off by default (tests/integration/test_relay_external_oidc.py uses them):
//   CMDOP_TEST_PORT              listen on this port (default: any free one) — a restart keeps the issuer
//   CMDOP_TEST_KEYS              a JSON file {"keys": [private JWKs with kid and alg]}: the signing keys,
//                                the first of an algorithm signs (default: one fresh P-256 key, kid "test")
//   CMDOP_TEST_RELAY_FINGERPRINT advertised as `cmdop_relay_fingerprint`
//   CMDOP_TEST_RESOURCE          a resource indicator (RFC 8707, an absolute URI): every authorization
//                                defaults to it and its access tokens are JWTs (`at+jwt`)
//   CMDOP_TEST_AUDIENCE          their `aud` (default: the resource indicator)
//   CMDOP_TEST_AT_ALG            their signing algorithm (default ES256)
//   CMDOP_TEST_TOKEN_CLAIMS      a JSON object of extra claims they carry (extraTokenClaims)
//
// Prints one JSON line on stdout once it listens: {"issuer": "https://127.0.0.1:PORT"}.
//
// The user's side of the device flow is oidc-provider's own: GET /device?user_code=… (its
// form-post page), POST /device (its confirmation page, with "abort"), POST /device confirm=yes.
// Only the login/consent interaction is ours (devInteractions off): GET /interaction/UID shows a
// tiny form, POST /interaction/UID/login with `account` (approve) or `abort` (deny) finishes it
// through provider.interactionFinished, the documented way. Test-only controls under /__test__/:
//   GET  /__test__/last-user-code      the user code of the latest device authorization
//   POST /__test__/device-ttl?seconds=N the lifetime of device codes issued from now on
//   POST /__test__/next-token-claims    form field `claims`, a JSON object: set on (null: removed
//                                        from) the payload of the next JWT access token, any claim
//                                        (exp, aud, …) — still signed by the provider
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import Provider, { errors } from 'oidc-provider';

const [certFile, keyFile] = process.argv.slice(2);
if (!certFile || !keyFile) {
  process.stderr.write('usage: node server.js CERT.pem KEY.pem\n');
  process.exit(2);
}

let deviceTtl = 600;
let lastUserCode = '';
const interval = Number(process.env.CMDOP_TEST_INTERVAL || '1');
const relay = process.env.CMDOP_TEST_RELAY || '';
const relayFingerprint = process.env.CMDOP_TEST_RELAY_FINGERPRINT || '';
const listenPort = Number(process.env.CMDOP_TEST_PORT || '0');
const resource = process.env.CMDOP_TEST_RESOURCE || '';
const audience = process.env.CMDOP_TEST_AUDIENCE || resource;
const accessTokenAlg = process.env.CMDOP_TEST_AT_ALG || 'ES256';
const tokenClaims = JSON.parse(process.env.CMDOP_TEST_TOKEN_CLAIMS || '{}');
let nextTokenClaims = null;

function signingKeys() {
  if (process.env.CMDOP_TEST_KEYS) {
    return JSON.parse(fs.readFileSync(process.env.CMDOP_TEST_KEYS, 'utf8')).keys;
  }
  const key = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return [{ ...key, kid: 'test', use: 'sig', alg: 'ES256' }];
}

// RFC 8707 resource indicators, only with CMDOP_TEST_RESOURCE: the client need not send
// `resource` (defaultResource, useGrantedResource), so a plain device login gets a JWT for it.
function resourceIndicators() {
  return {
    enabled: true,
    defaultResource: async () => resource,
    useGrantedResource: async () => true,
    getResourceServerInfo: async (ctx, indicator) => {
      if (indicator !== resource) throw new errors.InvalidTarget();
      return {
        scope: 'cmdop',
        audience,
        accessTokenTTL: 3600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: accessTokenAlg } },
      };
    },
  };
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function readForm(req) {
  return new Promise((resolve, reject) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => {
      body += chunk;
      if (body.length > 65536) reject(new Error('body too large'));
    });
    req.on('end', () => resolve(new URLSearchParams(body)));
    req.on('error', reject);
  });
}

const server = https.createServer({
  cert: fs.readFileSync(certFile),
  key: fs.readFileSync(keyFile),
});

server.listen(listenPort, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `https://127.0.0.1:${port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: 'cmdop-cli',
      client_name: 'cmdop',
      id_token_signed_response_alg: 'ES256',
      token_endpoint_auth_method: 'none',
      grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
      response_types: [],
      redirect_uris: [],
    }],
    jwks: { keys: signingKeys() },
    enabledJWA: { idTokenSigningAlgValues: ['ES256'] },
    features: {
      devInteractions: { enabled: false },
      deviceFlow: { enabled: true },
      revocation: { enabled: true },
      ...(resource ? { resourceIndicators: resourceIndicators() } : {}),   // else oidc-provider's defaults
    },
    extraTokenClaims: async (ctx, token) => (token.resourceServer ? tokenClaims : undefined),
    formats: {
      customizers: {
        jwt: async (ctx, token, jwt) => {
          if (!nextTokenClaims) return;
          for (const [name, value] of Object.entries(nextTokenClaims)) {
            if (value === null) delete jwt.payload[name];
            else jwt.payload[name] = value;
          }
          nextTokenClaims = null;
        },
      },
    },
    scopes: ['openid', 'offline_access'],
    rotateRefreshToken: true,
    ttl: {
      AccessToken: 3600,
      DeviceCode: () => deviceTtl,
      Grant: 86400,
      IdToken: 3600,
      Interaction: 600,
      RefreshToken: 86400,
      Session: 86400,
    },
    cookies: { keys: ['cmdop-test-only-cookie-key'] },
    discovery: {
      ...(relay ? { cmdop_relay: relay } : {}),
      ...(relayFingerprint ? { cmdop_relay_fingerprint: relayFingerprint } : {}),
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = `<!DOCTYPE html><title>error</title><p id="error">${escapeHtml(out.error)}</p>`;
    },
  });

  provider.on('device_authorization.success', (ctx, body) => { lastUserCode = body.user_code; });
  provider.on('server_error', (ctx, err) => { process.stderr.write(`server_error: ${err && err.stack}\n`); });
  // oidc-provider sends no `interval` (RFC 8628 then means 5 s); a test says how fast to poll.
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path === '/device/auth' && ctx.status === 200 && ctx.body && interval > 0) {
      ctx.body.interval = interval;
    }
  });

  const callback = provider.callback();

  async function handle(req, res) {
    const url = new URL(req.url, issuer);
    if (url.pathname === '/__test__/last-user-code' && req.method === 'GET') {
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ user_code: lastUserCode }));
      return;
    }
    if (url.pathname === '/__test__/device-ttl' && req.method === 'POST') {
      deviceTtl = Number(url.searchParams.get('seconds'));
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ device_ttl: deviceTtl }));
      return;
    }
    if (url.pathname === '/__test__/next-token-claims' && req.method === 'POST') {
      nextTokenClaims = JSON.parse((await readForm(req)).get('claims') || 'null');
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ next_token_claims: nextTokenClaims }));
      return;
    }
    const m = url.pathname.match(/^\/interaction\/([^/]+)(\/login)?$/);
    if (m) {
      const details = await provider.interactionDetails(req, res);
      if (req.method === 'GET' && !m[2]) {
        res.setHeader('Content-Type', 'text/html; charset=utf-8');
        res.end(`<!DOCTYPE html><title>Sign in</title>
<form method="post" action="/interaction/${escapeHtml(details.uid)}/login">
<input type="text" name="account" value="">
<button type="submit" name="approve" value="yes">Sign in</button>
<button type="submit" name="abort" value="yes">Cancel</button>
</form>`);
        return;
      }
      if (req.method === 'POST' && m[2]) {
        const form = await readForm(req);
        if (form.get('abort') || !form.get('account')) {
          await provider.interactionFinished(req, res, {
            error: 'access_denied', error_description: 'the user cancelled',
          }, { mergeWithLastSubmission: false });
          return;
        }
        const accountId = form.get('account');
        const grant = new provider.Grant({ accountId, clientId: details.params.client_id });
        if (details.params.scope) grant.addOIDCScope(details.params.scope);
        const grantId = await grant.save();
        await provider.interactionFinished(req, res, {
          login: { accountId },
          consent: { grantId },
        }, { mergeWithLastSubmission: false });
        return;
      }
      res.statusCode = 405;
      res.end();
      return;
    }
    callback(req, res);
  }

  server.on('request', (req, res) => {
    handle(req, res).catch((err) => {
      res.statusCode = 500;
      res.end(String(err && err.message));
    });
  });
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

process.on('SIGTERM', () => server.close(() => process.exit(0)));
