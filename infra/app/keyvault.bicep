// Key Vault for SMART private keys and the approval secrets (signing keys, flow webhook URL).
// RBAC authorization only; the app reads secrets through Key Vault references with its user-assigned identity.
param name string
param location string
param tags object = {}

@description('Stored as the approval webhook secret when given; leave empty to set the secret in the vault yourself.')
@secure()
param approvalWebhookUrl string = ''

@description('Stored as the approval signing keys secret when given; leave empty to set the secret in the vault yourself.')
@secure()
param approvalSigningKeys string = ''

param webhookSecretName string
param signingKeysSecretName string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  //checkov:skip=CKV_AZURE_109:Flex Consumption without VNet integration resolves Key Vault references over the public endpoint; access is RBAC-only
  //checkov:skip=CKV_AZURE_189:Same reason as CKV_AZURE_109: disabling public network access needs private endpoints
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource webhookSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(approvalWebhookUrl)) {
  //checkov:skip=CKV_AZURE_114:False positive: contentType is set below; checkov does not look inside conditional (if) resources
  //checkov:skip=CKV_AZURE_41:The flow URL has no natural expiry; an expired secret would break the Key Vault reference and the app setting
  parent: vault
  name: webhookSecretName
  properties: {
    value: approvalWebhookUrl
    contentType: 'text/uri-list'
  }
}

resource signingKeysSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(approvalSigningKeys)) {
  //checkov:skip=CKV_AZURE_114:False positive: contentType is set below; checkov does not look inside conditional (if) resources
  //checkov:skip=CKV_AZURE_41:Keys are rotated by adding a new kid in front (see docs/deployment.md); an expiry date would take the app setting down instead of rotating
  parent: vault
  name: signingKeysSecretName
  properties: {
    value: approvalSigningKeys
    contentType: 'text/plain'
  }
}

output name string = vault.name
output id string = vault.id
output uri string = vault.properties.vaultUri
