// The admins' workbook in Application Insights: pending approvals, changes ended by status, write latency,
// retries and conflicts, failing FHIR calls. The same queries are in docs/kql.md.
param location string
param applicationInsightsId string
param tags object = {}

var queries = [
  {
    title: 'Changes awaiting approval'
    query: 'customMetrics | where name == "writeback.approvals.pending" | extend target = tostring(customDimensions["writeback.target"]) | summarize pending = sum(valueSum) by target'
  }
  {
    title: 'Changes ended, by status (24 h)'
    query: 'customMetrics | where timestamp > ago(24h) and name == "writeback.changes.ended" | extend status = tostring(customDimensions["writeback.status"]) | summarize changes = sum(valueSum) by status, bin(timestamp, 1h) | render timechart'
  }
  {
    title: 'Write latency percentiles (ms, 24 h)'
    query: 'customMetrics | where timestamp > ago(24h) and name == "writeback.write.duration" | summarize p50 = percentile(valueSum / valueCount, 50), p95 = percentile(valueSum / valueCount, 95), p99 = percentile(valueSum / valueCount, 99) by bin(timestamp, 1h) | render timechart'
  }
  {
    title: 'Retries and conflicts (24 h)'
    query: 'customMetrics | where timestamp > ago(24h) and name in ("writeback.retries", "writeback.conflicts") | summarize total = sum(valueSum) by name, bin(timestamp, 1h) | render timechart'
  }
  {
    title: 'Failing FHIR calls, by status (24 h)'
    query: 'dependencies | where timestamp > ago(24h) and name startswith "FHIR " and success == false | summarize failures = count() by name, resultCode'
  }
]

var content = {
  version: 'Notebook/1.0'
  items: [for (q, i) in queries: {
    type: 3
    name: 'query-${i}'
    content: {
      version: 'KqlItem/1.0'
      title: q.title
      query: q.query
      size: 0
      queryType: 0
      resourceType: 'microsoft.insights/components'
    }
  }]
  fallbackResourceIds: [applicationInsightsId]
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, applicationInsightsId, 'writeback-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'FHIR write-back gateway'
    category: 'workbook'
    sourceId: applicationInsightsId
    serializedData: string(content)
  }
}

output workbookId string = workbook.id
