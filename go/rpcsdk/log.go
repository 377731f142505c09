package rpcsdk

import (
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"sync/atomic"
)

const (
	levelDebug int32 = iota
	levelInfo
	levelWarn
	levelError
)

var (
	logLevel  = levelInfo
	logger    = log.New(os.Stderr, "", log.LstdFlags|log.Lmicroseconds)
	levelName = [...]string{"DEBUG", "INFO", "WARN", "ERROR"}
)

// SetLogLevel selects the lowest level logged: trace or debug, info,
// warn, error (the `--log_level` values).
func SetLogLevel(level string) error {
	var l int32
	switch strings.ToLower(level) {
	case "trace", "debug":
		l = levelDebug
	case "info", "":
		l = levelInfo
	case "warn", "warning":
		l = levelWarn
	case "error":
		l = levelError
	default:
		return fmt.Errorf("unknown log level %q (trace, debug, info, warn or error)", level)
	}
	atomic.StoreInt32(&logLevel, l)
	return nil
}

// SetLogOutput sends the SDK's log lines to w (stderr by default).
func SetLogOutput(w io.Writer) { logger.SetOutput(w) }

func logf(level int32, format string, args ...interface{}) {
	if level < atomic.LoadInt32(&logLevel) {
		return
	}
	logger.Output(2, levelName[level]+" "+fmt.Sprintf(format, args...))
}

// zkLogger routes the ZooKeeper library's chatter to debug level.
type zkLogger struct{}

func (zkLogger) Printf(format string, args ...interface{}) {
	logf(levelDebug, "zookeeper: "+format, args...)
}
