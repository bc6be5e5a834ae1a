// A real, widely used OpenID provider (panva's oidc-provider, OpenID
// Certified) for hoop's identity suite: HTTPS on loopback with a test
// certificate, one client-credentials client, and RFC 9068 JWT access
// tokens for the audience "hoop", signed ES256 with a fresh key.
//   node server.mjs HOST CERT.pem KEY.pem   → prints "listening <issuer>"
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import Provider from 'oidc-provider';

const [host, certFile, keyFile] = process.argv.slice(2);
const { privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'real-1', alg: 'ES256', use: 'sig' };
const server = https.createServer({
  cert: fs.readFileSync(certFile),
  key: fs.readFileSync(keyFile),
});
server.listen(0, host, () => {
  const issuer = `https://${host}:${server.address().port}`;
  const provider = new Provider(issuer, {
    jwks: { keys: [jwk] },
    clients: [{
      client_id: 'ci-runner',
      client_secret: 'test-only-client-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      id_token_signed_response_alg: 'ES256',
    }],
    features: {
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'https://hoop.local/',
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          audience: 'hoop',
          scope: 'hoop',
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        }),
      },
    },
  });
  server.on('request', provider.callback());
  console.log(`listening ${issuer}`);
});
