// A real, widely used OpenID provider (panva's oidc-provider, OpenID
// Certified) for hoop's suites: HTTPS on loopback with a test certificate,
// one client-credentials client, and RFC 9068 JWT access tokens for the
// audience "hoop", signed ES256 with a fresh key.
//   node server.mjs HOST CERT.pem KEY.pem [REDIRECT_URI]  → prints "listening <issuer>"
// With REDIRECT_URI, a second client, "hoop-console" (secret
// "test-only-console-secret"), signs people in with the authorization code
// flow and PKCE through the provider's own login form: any login name is
// accepted, and the account's claims come from ACCOUNTS (unknown names get
// an e-mail and no groups).
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import Provider from 'oidc-provider';

const [host, certFile, keyFile, redirectUri] = process.argv.slice(2);
const ACCOUNTS = {
  alice: { groups: ['payments-leads'] },
  bob: { groups: ['payments-leads'] },
  carol: { groups: ['payments-leads'] },
  dave: { groups: ['marketing'] },
};
const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'real-1', alg: 'ES256', use: 'sig' };
const server = https.createServer({
  cert: fs.readFileSync(certFile),
  key: fs.readFileSync(keyFile),
});
const ciRunner = {
  client_id: 'ci-runner',
  client_secret: 'test-only-client-secret',
  grant_types: ['client_credentials'],
  redirect_uris: [],
  response_types: [],
  id_token_signed_response_alg: 'ES256',
};
const consoleClient = redirectUri && {
  client_id: 'hoop-console',
  client_secret: 'test-only-console-secret',
  grant_types: ['authorization_code'],
  response_types: ['code'],
  redirect_uris: [redirectUri],
  token_endpoint_auth_method: 'client_secret_basic',
  id_token_signed_response_alg: 'ES256',
};
server.listen(0, host, () => {
  const issuer = `https://${host}:${server.address().port}`;
  const provider = new Provider(issuer, {
    jwks: { keys: [jwk] },
    clients: [ciRunner, ...(consoleClient ? [consoleClient] : [])],
    features: {
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: (ctx, client) =>
          client?.clientId === 'hoop-console' ? undefined : 'https://hoop.local/',
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          audience: 'hoop',
          scope: 'hoop',
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        }),
      },
    },
    ...(consoleClient && {
      claims: { email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
      conformIdTokenClaims: false,
      pkce: { required: () => true },
      async findAccount(ctx, sub) {
        return {
          accountId: sub,
          async claims() {
            return {
              sub,
              email: `${sub}@example.test`,
              email_verified: true,
              name: sub,
              groups: ACCOUNTS[sub]?.groups ?? [],
            };
          },
        };
      },
      // No consent page: the console's client is the company's own.
      async loadExistingGrant(ctx) {
        const id = ctx.oidc.result?.consent?.grantId
          || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
        if (id) return ctx.oidc.provider.Grant.find(id);
        if (ctx.oidc.client.clientId !== 'hoop-console') return undefined;
        const grant = new ctx.oidc.provider.Grant({
          clientId: ctx.oidc.client.clientId,
          accountId: ctx.oidc.session.accountId,
        });
        grant.addOIDCScope('openid email profile groups');
        await grant.save();
        return grant;
      },
    }),
  });
  server.on('request', provider.callback());
  console.log(`listening ${issuer}`);
});
