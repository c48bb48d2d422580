// panva's oidc-provider as a third-party authority for freshtoken's
// end-to-end tests (tests/tests/oauth2_oidc_provider.rs starts it).
//
// Usage: node server.mjs
// Listens on an ephemeral port of 127.0.0.1 and prints one line,
// `READY http://127.0.0.1:<port>`, once it accepts requests. It stops when
// its stdin closes (the test process went away) or on SIGTERM.
//
// Development mode (NODE_ENV unset): plain-http issuer on loopback, no
// https redirect URIs needed. Interactions are completed automatically:
// any login is accepted as the account `test-user`, and every requested
// scope and resource is consented to.

import { createServer } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import {
  X509Certificate, createPrivateKey, createPublicKey, generateKeyPairSync, randomBytes,
} from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Provider, { errors } from 'oidc-provider';
import { decodeJwt, jwtVerify } from 'jose';

const RESOURCE = 'https://api.freshtoken.test/';
// More APIs, for the TokenManager test (one token per resource).
const MORE_RESOURCES = ['https://billing.freshtoken.test/', 'https://search.freshtoken.test/'];
const RESOURCE_SCOPES = 'api:read api:write';
const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
// The audience token exchange issues tokens for.
const EXCHANGE_AUDIENCE = 'https://backend.freshtoken.test';
// The service accounts whose JWT-bearer assertions are trusted.
const SERVICE_ACCOUNT = 'robot@freshtoken.test';

// Makes a key pair as PEM and loads it again. Node 20 can deadlock when
// the garbage collector frees a key-generation job while a JWK export of
// the KeyObject that job returned holds its lock (seen here: the main
// thread stuck in ~KeyGenJob under ExportJWK); keys loaded from PEM share
// nothing with the job, so exporting them as JWKs is safe.
function keyPair(type, options) {
  const pem = generateKeyPairSync(type, {
    ...options,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  return { privateKey: createPrivateKey(pem.privateKey), publicKey: createPublicKey(pem.publicKey) };
}

// Client keys for private_key_jwt, made at start. With
// FRESHTOKEN_OIDC_KEYS_DIR set, their private halves are written there for
// the Rust tests (PKCS#8 PEM and private JWK), together with a key that no
// client has registered (`stranger`), to show that a wrong key is refused.
const clientKeys = {
  rsa: keyPair('rsa', { modulusLength: 2048 }),
  ec: keyPair('ec', { namedCurve: 'P-256' }),
  // The "kubelet": signs the federated assertions the tests write to files.
  kubelet: keyPair('rsa', { modulusLength: 2048 }),
  stranger: keyPair('rsa', { modulusLength: 2048 }),
  // A service account's key: signs JWT-bearer grant assertions.
  robot: keyPair('rsa', { modulusLength: 2048 }),
};
const publicJwk = (name, kid) => ({ ...clientKeys[name].publicKey.export({ format: 'jwk' }), kid, use: 'sig' });
if (process.env.FRESHTOKEN_OIDC_KEYS_DIR) {
  for (const [name, { privateKey }] of Object.entries(clientKeys)) {
    const dir = process.env.FRESHTOKEN_OIDC_KEYS_DIR;
    writeFileSync(join(dir, `${name}.pem`), privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
    writeFileSync(join(dir, `${name}.jwk`), JSON.stringify({ ...privateKey.export({ format: 'jwk' }), kid: `${name}-1` }), { mode: 0o600 });
  }
}

// The secrets are test fixtures, known to the Rust tests. One has the
// characters that RFC 6749 2.3.1 requires to be form-encoded in the Basic
// header, to check both sides agree on it.
const clients = [
  {
    client_id: 'svc-basic',
    client_secret: 'basic-secret: with+odd/chars%',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: RESOURCE_SCOPES,
  },
  {
    client_id: 'svc-post',
    client_secret: 'post-secret-6f1d2c',
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: RESOURCE_SCOPES,
  },
  {
    client_id: 'app',
    client_secret: 'app-secret-9a8b7c',
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1:9/callback'],
    scope: 'openid offline_access',
  },
  // private_key_jwt with an RSA key (RS256 and PS256) and a P-256 key.
  {
    client_id: 'svc-rsa-jwt',
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: { keys: [publicJwk('rsa', 'rsa-1')] },
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: RESOURCE_SCOPES,
  },
  // The refresh-token flow with private_key_jwt (the RSA key above).
  {
    client_id: 'app-jwt',
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: { keys: [publicJwk('rsa', 'rsa-1')] },
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1:9/callback'],
    scope: 'openid offline_access',
  },
  {
    client_id: 'svc-ec-jwt',
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES256',
    jwks: { keys: [publicJwk('ec', 'ec-1')] },
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: RESOURCE_SCOPES,
  },
  // client_secret_jwt: HS256 keyed with this secret (at least 32 bytes).
  {
    client_id: 'svc-secret-jwt',
    client_secret: 'secret-jwt-0123456789abcdef0123456789abcdef',
    token_endpoint_auth_method: 'client_secret_jwt',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: RESOURCE_SCOPES,
  },
  // A workload whose client assertions are federated tokens that the
  // "kubelet" key signs and the tests write to a file.
  {
    client_id: 'workload',
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: { keys: [publicJwk('kubelet', 'kubelet-1')] },
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: RESOURCE_SCOPES,
  },
  // The JWT-bearer grant (registered below): a public client whose
  // assertions a trusted service-account key signs.
  {
    client_id: 'sa-bearer',
    token_endpoint_auth_method: 'none',
    grant_types: [JWT_BEARER],
    response_types: [],
    redirect_uris: [],
    scope: RESOURCE_SCOPES,
  },
  // Token exchange (registered below), and a client whose tokens live 2 s
  // (subjects that expire during a test).
  {
    client_id: 'exchanger',
    client_secret: 'exchanger-secret-5e4d3c',
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: [TOKEN_EXCHANGE],
    response_types: [],
    redirect_uris: [],
    scope: RESOURCE_SCOPES,
  },
  // The device authorization grant (RFC 8628): a public CLI that gets a
  // user's refresh token, and one whose device codes live 2 s.
  {
    client_id: 'device-cli',
    token_endpoint_auth_method: 'none',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
    response_types: [],
    redirect_uris: [],
    scope: 'openid offline_access',
  },
  {
    client_id: 'device-short',
    token_endpoint_auth_method: 'none',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
    response_types: [],
    redirect_uris: [],
    scope: 'openid offline_access',
  },
  {
    client_id: 'svc-short',
    client_secret: 'short-secret-7a6b5c',
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: RESOURCE_SCOPES,
  },
  // DPoP-bound tokens only (RFC 9449 5.2): a request without a proof is
  // refused; nonces are required (features.dPoP below).
  {
    client_id: 'svc-dpop',
    client_secret: 'dpop-secret-2b8e4f',
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: RESOURCE_SCOPES,
    dpop_bound_access_tokens: true,
  },
  // A public client whose refresh tokens are bound to the DPoP key of the
  // code exchange (oidc-provider binds a public client's refresh tokens).
  {
    client_id: 'app-dpop',
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1:9/callback'],
    scope: 'openid offline_access',
    dpop_bound_access_tokens: true,
  },
];

// A signing key made at start, so that JWT access tokens (with iat/exp)
// can be issued for the resource without keys in the repository.
const { privateKey } = keyPair('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'test', use: 'sig', alg: 'RS256' };

// With FRESHTOKEN_OIDC_TLS_DIR set (ca.pem, server.pem, server-key.pem,
// selfsigned.pem, made by the test), the server speaks https, asks for a
// client certificate (verified against ca.pem, but not required at the TLS
// layer, so that a request without one gets an OAuth2 invalid_client), and
// registers two RFC 8705 clients: `mtls-client` (tls_client_auth, subject
// DN CN=mtls-client, from the CA) and `mtls-self`
// (self_signed_tls_client_auth, the self-signed certificate's key and x5c).
const tlsDir = process.env.FRESHTOKEN_OIDC_TLS_DIR;
const tls = tlsDir && {
  ca: readFileSync(join(tlsDir, 'ca.pem')),
  cert: readFileSync(join(tlsDir, 'server.pem')),
  key: readFileSync(join(tlsDir, 'server-key.pem')),
  selfSigned: new X509Certificate(readFileSync(join(tlsDir, 'selfsigned.pem'))),
};
if (tls) {
  clients.push(
    {
      client_id: 'mtls-client',
      token_endpoint_auth_method: 'tls_client_auth',
      tls_client_auth_subject_dn: 'CN=mtls-client',
      tls_client_certificate_bound_access_tokens: true,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: RESOURCE_SCOPES,
    },
    {
      client_id: 'mtls-self',
      token_endpoint_auth_method: 'self_signed_tls_client_auth',
      jwks: {
        keys: [{
          ...tls.selfSigned.publicKey.export({ format: 'jwk' }),
          x5c: [tls.selfSigned.raw.toString('base64')],
        }],
      },
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: RESOURCE_SCOPES,
    },
  );
}

// The client certificate of the TLS connection, as node verified it.
const peerCertificate = (ctx) => {
  const peer = ctx.socket.getPeerCertificate?.();
  return peer && peer.raw ? new X509Certificate(peer.raw) : undefined;
};

const configuration = {
  clients,
  clientAuthMethods: [
    'client_secret_basic', 'client_secret_jwt', 'client_secret_post', 'private_key_jwt', 'none',
    ...(tls ? ['tls_client_auth', 'self_signed_tls_client_auth'] : []),
  ],
  jwks: { keys: [jwk] },
  cookies: { keys: ['freshtoken-oidc-test-cookie-key'] },
  scopes: ['openid', 'offline_access', 'api:read', 'api:write'],
  findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    // DPoP proofs checked wherever one is sent, with a server nonce
    // required in each (a client without a proof is unaffected).
    dPoP: { enabled: true, nonceSecret: randomBytes(32), requireNonce: () => true },
    mTLS: {
      enabled: Boolean(tls),
      certificateBoundAccessTokens: Boolean(tls),
      tlsClientAuth: Boolean(tls),
      selfSignedTlsClientAuth: Boolean(tls),
      getCertificate: peerCertificate,
      // Only a chain to ca.pem counts (node's own verification).
      certificateAuthorized: (ctx) => ctx.socket.authorized === true,
      certificateSubjectMatches: (ctx, property, expected) => {
        const cert = peerCertificate(ctx);
        return property === 'tls_client_auth_subject_dn' && cert !== undefined && cert.subject === expected;
      },
    },
    revocation: { enabled: true },
    // /device/auth, and the user's pages at /device (the code form, then
    // login and consent through the interactions completed below).
    deviceFlow: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        if (resourceIndicator !== RESOURCE && !MORE_RESOURCES.includes(resourceIndicator)) {
          throw new errors.InvalidTarget();
        }
        return {
          scope: RESOURCE_SCOPES,
          audience: resourceIndicator,
          accessTokenTTL: 30,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  // Short-lived tokens, refresh tokens rotated on every use (a replayed one
  // revokes the grant).
  ttl: {
    AccessToken: 30,
    ClientCredentials: (_ctx, _token, client) => (client.clientId === 'svc-short' ? 2 : 30),
    RefreshToken: 3600,
    IdToken: 3600,
    Grant: 3600,
    Interaction: 600,
    DeviceCode: (_ctx, _code, client) => (client.clientId === 'device-short' ? 2 : 600),
    Session: 3600,
  },
  rotateRefreshToken: true,
  pkce: { required: () => false },
};

// An invalid_grant whose description says why (oidc-provider's own hides
// it), so that the tests can tell the refusals apart.
function refuse(why) {
  const err = new errors.InvalidGrant(why);
  err.error_description = why;
  return err;
}

// Issues an opaque client-credentials-style token for the grant handlers.
async function issue(ctx, provider, scope) {
  const token = new provider.ClientCredentials({ client: ctx.oidc.client, scope });
  const value = await token.save();
  ctx.body = {
    access_token: value,
    expires_in: token.expiration,
    token_type: 'Bearer',
    scope: token.scope,
    issued_token_type: ACCESS_TOKEN_TYPE,
  };
}

// The two grants oidc-provider does not have, with real checks: the
// assertion's signature, issuer, audience, expiry and jti; the subject
// token looked up in the provider's own store (unknown or expired:
// refused).
function registerGrants(provider, issuer) {
  const tokenEndpoint = `${issuer}/token`;
  const trusted = { [SERVICE_ACCOUNT]: clientKeys.robot.publicKey };

  provider.registerGrantType(JWT_BEARER, async (ctx) => {
    const { assertion, scope } = ctx.oidc.params;
    let payload;
    try {
      const key = trusted[decodeJwt(assertion).iss];
      if (!key) throw refuse('the assertion issuer is not trusted');
      ({ payload } = await jwtVerify(assertion, key, {
        audience: [issuer, tokenEndpoint],
        algorithms: ['RS256', 'PS256'],
        requiredClaims: ['exp', 'iat', 'jti', 'sub'],
      }));
    } catch (err) {
      if (err instanceof errors.InvalidGrant) throw err;
      throw refuse(`the assertion is refused (${err.code ?? 'malformed'})`);
    }
    if (!(await provider.ReplayDetection.unique(payload.iss, payload.jti, payload.exp))) {
      throw refuse('the assertion was already used');
    }
    await issue(ctx, provider, payload.scope ?? scope);
  }, ['assertion', 'scope']);

  provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
    const p = ctx.oidc.params;
    if (p.subject_token_type !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest('subject_token_type must be an access token');
    }
    if (p.requested_token_type && p.requested_token_type !== ACCESS_TOKEN_TYPE) {
      throw new errors.InvalidRequest('only access tokens are issued');
    }
    if (p.audience !== EXCHANGE_AUDIENCE) {
      throw new errors.InvalidTarget('unknown audience');
    }
    // find() returns nothing for an unknown or revoked token (and for one
    // expired beyond the clock tolerance); an expired one is refused too.
    const subject = await provider.ClientCredentials.find(p.subject_token);
    if (!subject || subject.isExpired) throw refuse('the subject token is invalid or expired');
    if (p.actor_token !== undefined) {
      const actor = await provider.ClientCredentials.find(p.actor_token);
      if (!actor || actor.isExpired || p.actor_token_type !== ACCESS_TOKEN_TYPE) {
        throw refuse('the actor token is invalid or expired');
      }
    }
    await issue(ctx, provider, p.scope ?? subject.scope);
  }, ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'scope', 'actor_token', 'actor_token_type']);
}

const server = tls
  ? createTlsServer({ ca: tls.ca, cert: tls.cert, key: tls.key, requestCert: true, rejectUnauthorized: false })
  : createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  const provider = new Provider(issuer, configuration);

  // Complete every interaction at once, without a page.
  provider.use(async (ctx, next) => {
    if (ctx.method !== 'GET' || !/^\/interaction\/[^/]+$/.test(ctx.path)) {
      return next();
    }
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const { prompt, params, session } = details;
    let result;
    if (prompt.name === 'login') {
      result = { login: { accountId: 'test-user' } };
    } else {
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      const missing = prompt.details;
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
      result = { consent: { grantId: await grant.save() } };
    }
    const to = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
    ctx.status = 303;
    ctx.redirect(to);
    return undefined;
  });

  registerGrants(provider, issuer);
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  server.on('request', provider.callback());
  console.log(`READY ${issuer}`);
});

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.resume();
