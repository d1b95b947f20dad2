// Service Bus namespace (Entra ID only) and the change queue the dispatcher consumes.
param name string
param location string
param tags object = {}
param queueName string

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

resource queue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: namespace
  name: queueName
  properties: {
    // MessageId is the change id: a re-publish by the sweeper within 10 minutes is dropped by the broker.
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    maxDeliveryCount: 10
    lockDuration: 'PT1M'
    deadLetteringOnMessageExpiration: true
    requiresSession: false
  }
}

output name string = namespace.name
output id string = namespace.id
output queueName string = queue.name
// serviceBusEndpoint is 'https://<name>.servicebus.windows.net:443/' (cloud-specific suffix).
output fullyQualifiedNamespace string = split(replace(namespace.properties.serviceBusEndpoint, 'https://', ''), ':')[0]
