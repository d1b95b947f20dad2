// The gateway: a Python 3.11 Function App on the Flex Consumption plan, behind App Service Authentication
// (Entra ID). Every connection is identity-based with the user-assigned identity; the only secrets are
// Key Vault references.
param name string
param planName string
param location string
param tags object = {}

param identityId string
param identityClientId string

param storageBlobEndpoint string
param storageQueueEndpoint string
param storageTableEndpoint string
param deploymentContainerName string

param serviceBusFullyQualifiedNamespace string
param queueName string
param taskHubName string

param applicationInsightsConnectionString string

@description('App settings added as they are (targets, approval secrets as Key Vault references).')
param extraAppSettings object = {}

@description('Client id of the Entra ID app registration callers get tokens for.')
param authClientId string
param authTenantId string
param allowedAudiences array

param maximumInstanceCount int = 40
param instanceMemoryMB int = 2048

@description('Always-ready instances for the durable group (orchestrators, activities); 0 lets it scale to zero.')
@minValue(0)
param durableAlwaysReadyInstances int = 1

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  //checkov:skip=CKV_AZURE_225:Flex Consumption zone redundancy is available in a subset of regions only; opt in with properties.zoneRedundant where supported
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

var easyAuth = loadJsonContent('easyauth.json')

// WRITEBACK_AUTH_MODE easyauth trusts X-MS-CLIENT-PRINCIPAL only while App Service Authentication is on: in Azure
// the gateway believes the header only when the platform's WEBSITE_AUTH_ENABLED is true. On Flex Consumption the
// Functions host runs Easy Auth itself, switched on by that same variable, which the platform sets from
// authsettingsV2 below (azure-functions-host: JobHostEasyAuthMiddleware, HostEasyAuthOptionsSetup,
// HostAssignmentContext.ApplyAppSettings). So neither WEBSITE_AUTH_ENABLED (an app setting would override the
// platform's value) nor WRITEBACK_TRUSTED_FRONT is set here: should Easy Auth be turned off later (portal, CLI), the
// gateway refuses callers (503) instead of believing a header anyone can send. See docs/deployment.md.
var baseAppSettings = {
  // Host storage (Durable Functions task hub, leases, timers) through the identity; no AzureWebJobsStorage connection string.
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  AzureWebJobsStorage__blobServiceUri: storageBlobEndpoint
  AzureWebJobsStorage__queueServiceUri: storageQueueEndpoint
  AzureWebJobsStorage__tableServiceUri: storageTableEndpoint
  ServiceBusConnection__fullyQualifiedNamespace: serviceBusFullyQualifiedNamespace
  ServiceBusConnection__credential: 'managedidentity'
  ServiceBusConnection__clientId: identityClientId
  WritebackStorage__tableServiceUri: storageTableEndpoint
  WritebackStorage__blobServiceUri: storageBlobEndpoint
  WRITEBACK_MANAGED_IDENTITY_CLIENT_ID: identityClientId
  AZURE_CLIENT_ID: identityClientId
  WRITEBACK_TASK_HUB: taskHubName
  WRITEBACK_QUEUE_NAME: queueName
  // The deployed pair (shipped in the package; start-up checks the policy against the targets). Relative paths are
  // taken from the app's folder, whatever the worker's working directory. Target ahds-fhir takes its URL from
  // WRITEBACK_TARGET_AHDS_FHIR_BASE_URL (fhirServiceUrl) and is not ready until it is set.
  WRITEBACK_TARGETS_FILE: 'config/targets.azure.yaml'
  WRITEBACK_POLICY_FILE: 'config/policy.azure.yaml'
  WRITEBACK_AUTH_MODE: 'easyauth'
  // The host's own request limit (100 MB by default): the API's largest body is a change request of
  // WRITEBACK_MAX_BODY_BYTES (1 MiB), so 2 MiB leaves the gateway's 413 problem to answer.
  FUNCTIONS_REQUEST_BODY_SIZE_LIMIT: '2097152'
  // The site cannot read its own defaultHostName here; the name gives the same host unless a custom domain is added.
  WRITEBACK_PUBLIC_BASE_URL: 'https://${name}.azurewebsites.net'
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'Authorization=AAD;ClientId=${identityClientId}'
  // The worker gives each function the host's trace context and tells the host to stop re-exporting worker logs
  // (else they arrive twice). Not PYTHON_ENABLE_OPENTELEMETRY: without this switch the worker has no trace-context
  // propagator and fails every invocation (azure_functions_worker dispatcher.py, python-worker issue 1881).
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
  // The switch makes the worker call configure_azure_monitor() before it imports the app: with these (the distro's
  // documented switches) it installs no exporter, so the app's own pipeline, redaction first, is the one that
  // exports (README: Deployment and telemetry). The app refuses to start if another pipeline got there first.
  OTEL_TRACES_EXPORTER: 'none'
  OTEL_LOGS_EXPORTER: 'none'
  OTEL_METRICS_EXPORTER: 'none'
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  //checkov:skip=CKV_AZURE_17:Callers authenticate with Entra ID tokens through App Service Authentication; client certificates would also block the signed approval links opened by flows and browsers
  //checkov:skip=CKV_AZURE_222:Public by design: callers are apps, Logic Apps and Power Automate on the internet, each needing an Entra ID token (or a signed link for the callback)
  //checkov:skip=CKV_AZURE_212:Flex Consumption scales out per function group; the durable group keeps durableAlwaysReadyInstances always ready, HTTP scales from zero
  //checkov:skip=CKV_AZURE_213:Flex Consumption has no App Service health check; probes call /api/v1/health, which is left anonymous for them
  name: name
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    publicNetworkAccess: 'Enabled'
    // Key Vault references resolve with the user-assigned identity (it holds Key Vault Secrets User).
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [for setting in items(union(baseAppSettings, extraAppSettings)): {
        name: setting.key
        value: setting.value
      }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        // Microsoft's guidance for Durable Functions on Flex Consumption: one always-ready instance for the durable
        // group, so a raised approval event or a timer is picked up without a cold start
        // (learn.microsoft.com/azure/azure-functions/durable/durable-functions-azure-storage-provider#flex-consumption-plan).
        alwaysReady: (durableAlwaysReadyInstances > 0) ? [
          {
            name: 'durable'
            instanceCount: durableAlwaysReadyInstances
          }
        ] : []
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

// No token store: the gateway never calls anything on a user's behalf, so it needs no stored provider tokens. On
// Microsoft.Web the store other than the file system is a blob container reached through a SAS URL app setting
// (login.tokenStore.azureBlobStorage.sasUrlSettingName): a secret, which this storage account (shared keys off) could
// only issue as a user-delegation SAS of at most 7 days. Without the store /.auth/me does not answer; the review page
// learns that a person is signed out from the API's 401. See docs/deployment.md.
resource auth 'Microsoft.Web/sites/config@2024-04-01' = {
  //checkov:skip=CKV_AZURE_13:False positive: the check reads authsettings (v1) properties.enabled; this is authsettingsV2 with platform.enabled and requireAuthentication
  //checkov:skip=CKV_AZURE_63:False positive: site-level logging check applied to the authsettingsV2 child resource; logs go to Application Insights
  //checkov:skip=CKV_AZURE_65:False positive: site-level logging check applied to the authsettingsV2 child resource
  //checkov:skip=CKV_AZURE_66:False positive: site-level logging check applied to the authsettingsV2 child resource
  //checkov:skip=CKV_AZURE_80:False positive: .NET Framework version check on a Python app's authsettingsV2 resource
  //checkov:skip=CKV_AZURE_88:False positive: Azure Files check on the authsettingsV2 resource; Flex Consumption does not use Azure Files
  //checkov:skip=CKV_AZURE_222:False positive: public network access check applied to the authsettingsV2 child resource (see the site)
  parent: site
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
      runtimeVersion: '~1'
    }
    globalValidation: {
      requireAuthentication: true
      // One file with the local emulation: health for probes; the approval callback carries its own signed token.
      unauthenticatedClientAction: easyAuth.unauthenticatedClientAction
      excludedPaths: easyAuth.excludedPaths
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: authClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${authTenantId}/v2.0'
        }
        validation: {
          allowedAudiences: allowedAudiences
        }
      }
    }
    // No token store (see the comment above this resource and docs/deployment.md).
    login: {
      tokenStore: {
        enabled: false
      }
    }
    httpSettings: {
      requireHttps: true
      forwardProxy: {
        convention: 'NoProxy'
      }
    }
  }
}

output name string = site.name
output uri string = 'https://${site.properties.defaultHostName}'
