// An OAuth 2.1 authorization server for the tests: node-oidc-provider with PKCE required, resource
// indicators (RFC 8707) and RS256 JWT access tokens for one resource, the gateway. Its development
// login and consent pages stand in for a real login: any login name is accepted as the subject.
//
//   node issuer.mjs ISSUER_URL PORT RESOURCE AUDIENCE CLIENT_ID REDIRECT_URI
//
// Subjects whose name begins with "ops" get the sandbox:admin scope and the tenant-admin profile.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

const [issuer, port, resource, audience, clientId, redirectUri] = process.argv.slice(2);
const USER_SCOPES = 'sandbox:exec sandbox:files';
const ADMIN_SCOPES = `${USER_SCOPES} sandbox:admin`;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signing = { ...privateKey.export({ format: 'jwk' }), kid: 'test-issuer-1', use: 'sig', alg: 'RS256' };

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    token_endpoint_auth_method: 'none',
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  cookies: { keys: [randomBytes(32).toString('hex')] },
  jwks: { keys: [signing] },
  pkce: { required: () => true },
  scopes: ['openid', 'sandbox:exec', 'sandbox:files', 'sandbox:admin'],
  features: {
    devInteractions: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator) => {
        if (indicator !== resource) throw new errors.InvalidTarget();
        const admin = String(ctx.oidc.session?.accountId ?? ctx.oidc.entities?.Grant?.accountId ?? '').startsWith('ops');
        return {
          scope: admin ? ADMIN_SCOPES : USER_SCOPES,
          audience,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  extraTokenClaims: async (ctx, token) => ({
    tenant: 'acme',
    profile: String(token.accountId).startsWith('ops') ? 'tenant-admin' : 'default',
  }),
});
provider.proxy = false;
provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`issuer ${issuer} listening on 127.0.0.1:${port}`);
});
