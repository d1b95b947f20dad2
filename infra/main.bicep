// The FHIR write-back gateway on Azure: azd entry point (subscription scope, one resource group per environment).
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; names and tags every resource.')
param environmentName string

@minLength(1)
@description('Region for all resources (Flex Consumption must be available there).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Resource group name; defaults to rg-<environmentName>.')
param resourceGroupName string = ''

@description('Client id of the Entra ID app registration that App Service Authentication validates tokens for.')
param authClientId string

@description('Tenant of that app registration.')
param authTenantId string = tenant().tenantId

@description('Token audiences accepted by App Service Authentication; defaults to api://<authClientId> and the client id.')
param allowedAudiences array = []

@description('Optional: resource id of an Azure Health Data Services FHIR service; the identity gets FHIR Data Writer on it.')
param fhirServiceResourceId string = ''

@description('Optional: base URL of that FHIR service (https://<workspace>-<service>.fhir.azurehealthcareapis.com); becomes the base URL of target ahds-fhir.')
param fhirServiceUrl string = ''

@description('Optional: the approval flow\'s HTTP trigger URL; stored in Key Vault, never in an app setting.')
@secure()
param approvalWebhookUrl string = ''

@description('Optional: approval signing keys (kid:base64key[,...]); stored in Key Vault, never in an app setting.')
@secure()
param approvalSigningKeys string = ''

@description('Set to true once both approval secrets exist in the vault (set with az keyvault secret set) to wire them without passing them here.')
param approvalSecretsInKeyVault bool = false

@description('Optional: the deploying principal (azd sets AZURE_PRINCIPAL_ID); gets Key Vault Secrets Officer to manage the approval secrets.')
param principalId string = ''

@description('Durable Functions task hub name (letters and digits only).')
param taskHubName string = 'writeback'

// Microsoft's Durable Functions on Flex Consumption guidance: one always-ready instance for the `durable` group
// (learn.microsoft.com/azure/azure-functions/durable/durable-functions-azure-storage-provider#flex-consumption-plan).
@description('Always-ready instances for the durable group (orchestrators and activities); 0 lets it scale to zero, at the price of a cold start before an approved change is written.')
@minValue(0)
@maxValue(20)
param durableAlwaysReadyInstances int = 1

@description('Optional: names of the keys in this deployment\'s Key Vault that SMART Backend Services targets sign with (auth.key_name kv:https://<vault>/<name> in config/targets.azure.yaml), comma-separated, no spaces. The identity gets Key Vault Crypto User on each key; create the keys first.')
param smartSigningKeyNames string = ''

param queueName string = 'writeback-changes'
param payloadContainerName string = 'writeback-payloads'
param tablePrefix string = 'writeback'

var abbrs = {
  resourceGroup: 'rg-'
  functionApp: 'func-'
  plan: 'plan-'
  identity: 'id-'
  storage: 'st'
  serviceBus: 'sb-'
  keyVault: 'kv-'
  logAnalytics: 'log-'
  applicationInsights: 'appi-'
}
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = '${abbrs.functionApp}writeback-${resourceToken}'
var deploymentContainerName = 'app-package-${take(resourceToken, 7)}'
var webhookSecretName = 'writeback-approval-webhook-url'
var signingKeysSecretName = 'writeback-approval-signing-keys'
var resourceGroupNameResolved = !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourceGroup}${environmentName}'
var smartKeyNames = empty(smartSigningKeyNames) ? [] : split(smartSigningKeyNames, ',')
var effectiveAudiences = empty(allowedAudiences) ? [
  'api://${authClientId}'
  authClientId
] : allowedAudiences

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: resourceGroupNameResolved
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: '${abbrs.identity}writeback-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: '${abbrs.logAnalytics}${resourceToken}'
    applicationInsightsName: '${abbrs.applicationInsights}${resourceToken}'
    location: location
    tags: tags
  }
}

module workbook 'app/workbook.bicep' = {
  name: 'workbook'
  scope: rg
  params: {
    location: location
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbrs.storage}${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    payloadContainerName: payloadContainerName
    tableNames: [
      '${tablePrefix}idempotency'
      '${tablePrefix}changes'
      '${tablePrefix}resources'
    ]
  }
}

module serviceBus 'app/servicebus.bicep' = {
  name: 'servicebus'
  scope: rg
  params: {
    name: '${abbrs.serviceBus}${resourceToken}'
    location: location
    tags: tags
    queueName: queueName
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: '${abbrs.keyVault}${take(resourceToken, 20)}'
    location: location
    tags: tags
    approvalWebhookUrl: approvalWebhookUrl
    approvalSigningKeys: approvalSigningKeys
    webhookSecretName: webhookSecretName
    signingKeysSecretName: signingKeysSecretName
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    serviceBusNamespaceName: serviceBus.outputs.name
    serviceBusQueueName: serviceBus.outputs.queueName
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    smartSigningKeyNames: smartKeyNames
    deployerPrincipalId: principalId
  }
}

// /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.HealthcareApis/workspaces/<ws>/fhirservices/<name>
// ARM evaluates the scope and parameters of a module whose condition is false (Azure/bicep issues 11463, 2466,
// 8022), so without a FHIR service the split below must still have eleven parts: a placeholder id in this
// deployment's own resource group (which exists: dependsOn below) stands in, and is never deployed to.
// tests/infra/test_doc_rules.py checks every such index is guarded.
var fhirServiceIdOrPlaceholder = empty(fhirServiceResourceId) ? '/subscriptions/${subscription().subscriptionId}/resourceGroups/${resourceGroupNameResolved}/providers/Microsoft.HealthcareApis/workspaces/none/fhirservices/none' : fhirServiceResourceId
var fhirIdParts = split(fhirServiceIdOrPlaceholder, '/')

module fhirRbac 'app/fhir-rbac.bicep' = if (!empty(fhirServiceResourceId)) {
  name: 'fhir-rbac'
  scope: resourceGroup(fhirIdParts[2], fhirIdParts[4])
  params: {
    fhirServiceName: '${fhirIdParts[8]}/${fhirIdParts[10]}'
    principalId: identity.outputs.principalId
  }
  dependsOn: [
    rg
  ]
}

var keyVaultSecretsBase = '${keyVault.outputs.uri}secrets/'
var approvalSettings = (!empty(approvalSigningKeys) || approvalSecretsInKeyVault) ? {
  // Versionless references: a new secret version is picked up without redeploying.
  WRITEBACK_APPROVAL_SIGNING_KEYS: '@Microsoft.KeyVault(SecretUri=${keyVaultSecretsBase}${signingKeysSecretName})'
} : {}
var webhookSettings = (!empty(approvalWebhookUrl) || approvalSecretsInKeyVault) ? {
  WRITEBACK_APPROVAL_WEBHOOK_URL: '@Microsoft.KeyVault(SecretUri=${keyVaultSecretsBase}${webhookSecretName})'
} : {}
// Overrides the base URL of the target with id 'ahds-fhir' in config/targets.azure.yaml (the deployed targets file).
var fhirSettings = empty(fhirServiceUrl) ? {} : {
  WRITEBACK_TARGET_AHDS_FHIR_BASE_URL: fhirServiceUrl
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: functionAppName
    planName: '${abbrs.plan}${resourceToken}'
    location: location
    tags: union(tags, {
      'azd-service-name': 'api'
    })
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageBlobEndpoint: storage.outputs.blobEndpoint
    storageQueueEndpoint: storage.outputs.queueEndpoint
    storageTableEndpoint: storage.outputs.tableEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    serviceBusFullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
    queueName: serviceBus.outputs.queueName
    taskHubName: taskHubName
    durableAlwaysReadyInstances: durableAlwaysReadyInstances
    applicationInsightsConnectionString: monitoring.outputs.applicationInsightsConnectionString
    extraAppSettings: union(approvalSettings, webhookSettings, fhirSettings)
    authClientId: authClientId
    authTenantId: authTenantId
    allowedAudiences: effectiveAudiences
  }
  // The host starts as soon as the site exists; its identity must already hold the data roles.
  dependsOn: [
    rbac
  ]
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
output SERVICE_API_NAME string = api.outputs.name
output SERVICE_API_URI string = api.outputs.uri
output AZURE_MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_SERVICEBUS_NAMESPACE string = serviceBus.outputs.fullyQualifiedNamespace
output AZURE_KEY_VAULT_URI string = keyVault.outputs.uri
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output APPLICATIONINSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
