package main

// The community Cassandra datasource (hadesarchitect-cassandra-datasource) is not in the SDK, whose
// runtime would keep its targets as an unchecked map. Its query model is registered here so they
// are decoded strictly too: the fields its backend reads (dataQuery in pkg/handler/data_query.go
// of github.com/HadesArchitect/GrafanaCassandraDatasource, 3.x) plus Grafana's common DataQuery
// fields (refId, hide, key, queryType, datasource).

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"

	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/common"
)

const cassandraType = "hadesarchitect-cassandra-datasource"

type cassandraQuery struct {
	RefId        string                `json:"refId"`
	Hide         *bool                 `json:"hide,omitempty"`
	Key          *string               `json:"key,omitempty"`
	QueryType    *string               `json:"queryType,omitempty"`
	Datasource   *common.DataSourceRef `json:"datasource,omitempty"`
	DatasourceId *int64                `json:"datasourceId,omitempty"`

	// Raw CQL: target is the statement, alias the legend ({{column}} interpolated).
	RawQuery bool    `json:"rawQuery"`
	Target   *string `json:"target,omitempty"`
	Alias    *string `json:"alias,omitempty"`

	// The query configurator: the plugin builds the SELECT from these.
	Keyspace    *string `json:"keyspace,omitempty"`
	Table       *string `json:"table,omitempty"`
	ColumnTime  *string `json:"columnTime,omitempty"`
	ColumnValue *string `json:"columnValue,omitempty"`
	ColumnId    *string `json:"columnId,omitempty"`
	ValueId     *string `json:"valueId,omitempty"`
	Filtering   *bool   `json:"filtering,omitempty"`
	Instant     *bool   `json:"instant,omitempty"`
}

func (query *cassandraQuery) ImplementsDataqueryVariant() {}

func (query *cassandraQuery) DataqueryType() string { return cassandraType }

func (query *cassandraQuery) Equals(other variants.Dataquery) bool {
	return reflect.DeepEqual(query, other)
}

// Validate asks for what the plugin's backend needs to build a statement.
func (query *cassandraQuery) Validate() error {
	var missing []string
	need := func(name string, value *string) {
		if value == nil || *value == "" {
			missing = append(missing, name)
		}
	}
	if query.RefId == "" {
		missing = append(missing, "refId")
	}
	if query.QueryType != nil && *query.QueryType != "query" && *query.QueryType != "alert" {
		return fmt.Errorf("queryType %q: the plugin knows \"query\" and \"alert\"", *query.QueryType)
	}
	if query.RawQuery {
		need("target", query.Target)
	} else {
		need("keyspace", query.Keyspace)
		need("table", query.Table)
		need("columnTime", query.ColumnTime)
		need("columnValue", query.ColumnValue)
		need("columnId", query.ColumnId)
		need("valueId", query.ValueId)
	}
	if len(missing) > 0 {
		return fmt.Errorf("cassandra query: missing %v", missing)
	}
	return nil
}

func cassandraVariant() variants.DataqueryConfig {
	loose := func(raw []byte) (variants.Dataquery, error) {
		query := &cassandraQuery{}
		return query, json.Unmarshal(raw, query)
	}
	return variants.DataqueryConfig{
		Identifier:           cassandraType,
		DataqueryUnmarshaler: loose,
		StrictDataqueryUnmarshaler: func(raw []byte) (variants.Dataquery, error) {
			query := &cassandraQuery{}
			decoder := json.NewDecoder(bytes.NewReader(raw))
			decoder.DisallowUnknownFields()
			if err := decoder.Decode(query); err != nil {
				return nil, err
			}
			if decoder.More() {
				return nil, errors.New("trailing data after the query object")
			}
			if err := query.Validate(); err != nil {
				return nil, err
			}
			return query, nil
		},
	}
}
