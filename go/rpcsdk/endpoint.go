package rpcsdk

import (
	"os"
	"strings"
	"time"
)

// Endpoint is the registry record of one listening address (SPEC §6),
// field for field as the Rust SDK writes it.
type Endpoint struct {
	Service        string `json:"service"`
	ServiceID      string `json:"service_id"`
	Frontend       string `json:"frontend"`
	DeployPath     string `json:"deploy_path"`
	CodeURLVersion string `json:"code_url_version"`
	Hostname       string `json:"hostname"`
	StartTime      string `json:"start_time"`
}

// NewEndpoint is the record for frontend, with hostname, start time and
// working directory taken from this process.
func NewEndpoint(service, frontend string) Endpoint {
	wd, _ := os.Getwd()
	host, _ := os.Hostname()
	return Endpoint{
		Service:    service,
		ServiceID:  ServiceID(frontend),
		Frontend:   frontend,
		DeployPath: wd,
		Hostname:   host,
		StartTime:  time.Now().Format("2006-01-02 15:04:05"),
	}
}

// ServiceID derives the node name from a frontend address: `.` and `:`
// become `_`, `/` is dropped, and only the last 20 characters are kept.
func ServiceID(frontend string) string {
	r := []rune(strings.NewReplacer("/", "", ".", "_", ":", "_").Replace(frontend))
	if len(r) > 20 {
		r = r[len(r)-20:]
	}
	return string(r)
}

// servicePath is /zk/product/{product}/services/{service}/{service_id}.
func servicePath(product string, ep Endpoint) string {
	return "/zk/product/" + product + "/services/" + ep.Service + "/" + ep.ServiceID
}
