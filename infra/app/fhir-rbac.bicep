// FHIR Data Writer for the app's identity on an existing Azure Health Data Services FHIR service.
// Deployed into the FHIR service's own resource group, which may differ from the app's.
@description('Workspace and service name, as in the resource id: <workspace>/<fhirservice>.')
param fhirServiceName string
param principalId string

// Writer, not Contributor: the gateway creates and updates resources but never hard-deletes or purges history.
var fhirDataWriter = '3f88fce4-5892-4214-ae73-ba5294559913'

resource fhirService 'Microsoft.HealthcareApis/workspaces/fhirservices@2023-11-01' existing = {
  name: fhirServiceName
}

resource fhirWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(fhirService.id, principalId, fhirDataWriter)
  scope: fhirService
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', fhirDataWriter)
  }
}
