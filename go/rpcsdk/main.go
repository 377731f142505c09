package rpcsdk

import (
	"flag"
	"fmt"
	"os"

	"github.com/apache/thrift/lib/go/thrift"
)

// Version is printed by -V; set it at link time with
// -ldflags "-X rpcproxy/go/rpcsdk.Version=1.2.3".
var Version = "dev"

// ConfigCheck validates a loaded configuration before anything starts
// (say, that keys the service needs are set).
type ConfigCheck func(*Config) error

// ProcessorFactory builds the service's processor from its configuration,
// e.g. `echo.NewEchoProcessor(handler)`.
type ProcessorFactory func(*Config) (thrift.TProcessor, error)

// RpcMain is a service's whole main(), shaped like the original's: it reads
// the command line shared by every binary of the project (-c config.ini,
// -L logfile, --log_level, --work_dir, --code_url_version, -V), loads the
// configuration, checks it, builds the processor, then serves, registered
// (in ZooKeeper or the local registry), until SIGTERM or SIGINT, and stops
// gracefully. It exits the
// process: 0 after a graceful stop, 1 on an error, 2 on a bad command line.
func RpcMain(binaryName, desc string, configCheck ConfigCheck, processorFactory ProcessorFactory) {
	os.Exit(rpcMain(binaryName, desc, os.Args[1:], configCheck, processorFactory))
}

func rpcMain(binaryName, desc string, args []string, check ConfigCheck, factory ProcessorFactory) int {
	fs := flag.NewFlagSet(binaryName, flag.ContinueOnError)
	var configPath, logFile, logLevel, workDir, codeVersion, profileAddress string
	var version bool
	str := func(p *string, value, help string, names ...string) {
		for _, n := range names {
			fs.StringVar(p, n, value, help)
		}
	}
	str(&configPath, "", "configuration file (config.ini format)", "c", "config")
	str(&logFile, "", "log file (appended to); stderr when absent", "L", "log")
	str(&logLevel, "info", "trace, debug, info, warn or error", "log_level", "log-level")
	str(&workDir, "", "working directory to switch to before anything else", "work_dir", "work-dir")
	str(&codeVersion, "", "code version recorded in the registry entry", "code_url_version", "code-url-version")
	str(&profileAddress, "", "accepted for compatibility; a Go service serves no profile page", "profile_address", "profile-address")
	fs.BoolVar(&version, "V", false, "print the version and exit")
	fs.BoolVar(&version, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "%s: %s\n\nUsage: %s -c config.ini [flags]\n", binaryName, desc, binaryName)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if version {
		fmt.Printf("%s %s\n", binaryName, Version)
		return 0
	}
	if workDir != "" {
		if err := os.Chdir(workDir); err != nil {
			fmt.Fprintf(os.Stderr, "%s: cannot switch to the working directory %s: %v\n", binaryName, workDir, err)
			return 1
		}
	}
	if err := SetLogLevel(logLevel); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", binaryName, err)
		return 2
	}
	if logFile != "" {
		f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", binaryName, err)
			return 1
		}
		defer f.Close()
		SetLogOutput(f)
	}
	if profileAddress != "" {
		logf(levelWarn, "--profile_address is ignored: a Go service serves no profile page")
	}
	if configPath == "" {
		fmt.Fprintf(os.Stderr, "%s: -c config.ini is required\n", binaryName)
		fs.Usage()
		return 2
	}
	config, err := LoadConfig(configPath)
	if err != nil {
		logf(levelError, "%v", err)
		return 1
	}
	if check != nil {
		if err := check(config); err != nil {
			logf(levelError, "configuration: %v", err)
			return 1
		}
	}
	processor, err := factory(config)
	if err != nil {
		logf(levelError, "cannot build the processor: %v", err)
		return 1
	}
	svc := NewService(config, processor)
	svc.CodeURLVersion = codeVersion
	if err := svc.Run(); err != nil {
		logf(levelError, "%v", err)
		return 1
	}
	return 0
}
