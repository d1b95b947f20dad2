/**
 * Bearer-token check for the local FHIR server: RS256 JWTs verified with node:crypto against a JWKS fetched over
 * HTTP (lazily, cached, fetched again once when a token names an unknown `kid`).
 */
import { createPublicKey, verify } from 'node:crypto';

const CLOCK_SKEW_SECONDS = 30;

export class TokenError extends Error {}

export class JwksVerifier {
  /**
   * @param {{jwksUrl: string, audience: string, issuer?: string}} options
   */
  constructor({ jwksUrl, audience, issuer }) {
    this.jwksUrl = jwksUrl;
    this.audience = audience;
    this.issuer = issuer;
    this.keys = new Map();
    this.pendingFetch = undefined;
  }

  /**
   * @param {string | undefined} authorization - the Authorization header.
   * @returns {Promise<object>} the verified claims.
   * @throws {TokenError} when the token is missing or not acceptable.
   */
  async verifyAuthorization(authorization) {
    const match = /^Bearer\s+([A-Za-z0-9\-_.]+)\s*$/i.exec(authorization ?? '');
    if (!match) {
      throw new TokenError('Missing bearer token');
    }
    return this.verifyToken(match[1]);
  }

  async verifyToken(token) {
    const parts = token.split('.');
    if (parts.length !== 3) {
      throw new TokenError('Malformed token');
    }
    const header = decodeJson(parts[0], 'header');
    const claims = decodeJson(parts[1], 'payload');
    if (header.alg !== 'RS256') {
      throw new TokenError(`Unsupported alg ${JSON.stringify(header.alg)}`);
    }
    const key = await this.keyFor(header.kid);
    const signature = Buffer.from(parts[2], 'base64url');
    if (!verify('sha256', Buffer.from(`${parts[0]}.${parts[1]}`), key, signature)) {
      throw new TokenError('Invalid signature');
    }
    this.checkClaims(claims);
    return claims;
  }

  checkClaims(claims) {
    const now = Date.now() / 1000;
    if (typeof claims.exp !== 'number') {
      throw new TokenError('Token has no exp');
    }
    if (claims.exp + CLOCK_SKEW_SECONDS <= now) {
      throw new TokenError('Token expired');
    }
    if (typeof claims.nbf === 'number' && claims.nbf - CLOCK_SKEW_SECONDS > now) {
      throw new TokenError('Token not yet valid');
    }
    const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
    if (!audiences.includes(this.audience)) {
      throw new TokenError(`Token audience ${JSON.stringify(claims.aud)} is not ${JSON.stringify(this.audience)}`);
    }
    if (this.issuer !== undefined && claims.iss !== this.issuer) {
      throw new TokenError(`Token issuer ${JSON.stringify(claims.iss)} is not ${JSON.stringify(this.issuer)}`);
    }
  }

  async keyFor(kid) {
    if (typeof kid !== 'string' || !kid) {
      throw new TokenError('Token header has no kid');
    }
    if (!this.keys.has(kid)) {
      await this.refresh();
    }
    const key = this.keys.get(kid);
    if (!key) {
      throw new TokenError(`Unknown kid ${JSON.stringify(kid)}`);
    }
    return key;
  }

  /** Fetch the JWKS again; concurrent callers share one fetch. */
  async refresh() {
    this.pendingFetch ??= this.fetchKeys().finally(() => {
      this.pendingFetch = undefined;
    });
    await this.pendingFetch;
  }

  async fetchKeys() {
    let jwks;
    try {
      const response = await fetch(this.jwksUrl, { signal: AbortSignal.timeout(5000) });
      if (!response.ok) {
        throw new Error(`HTTP ${response.status}`);
      }
      jwks = await response.json();
    } catch (err) {
      throw new TokenError(`Cannot fetch JWKS from ${this.jwksUrl}: ${err.message}`);
    }
    const keys = new Map();
    for (const jwk of jwks.keys ?? []) {
      if (jwk.kty === 'RSA' && jwk.kid && (jwk.use === undefined || jwk.use === 'sig')) {
        keys.set(jwk.kid, createPublicKey({ key: jwk, format: 'jwk' }));
      }
    }
    this.keys = keys;
  }
}

function decodeJson(segment, what) {
  try {
    const value = JSON.parse(Buffer.from(segment, 'base64url').toString('utf8'));
    if (value === null || typeof value !== 'object') {
      throw new Error('not an object');
    }
    return value;
  } catch {
    throw new TokenError(`Malformed token ${what}`);
  }
}
