"""A local OpenID Connect provider shaped as Microsoft Entra ID v2.0 (see ``tools.openid_provider.server``)."""
