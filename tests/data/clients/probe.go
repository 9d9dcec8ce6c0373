// Go's own resolver (no cgo), timed: a program with no module dependencies.
//
// Usage: probe NAME. Prints one line: STATUS SECONDS [ADDRESS...], where
// STATUS is "ok", "nxdomain", "timeout" or "fail".
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

func main() {
	resolver := &net.Resolver{PreferGo: true}
	start := time.Now()
	addrs, err := resolver.LookupHost(context.Background(), os.Args[1])
	took := time.Since(start).Seconds()
	if err != nil {
		status := "fail"
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			status = "nxdomain"
		} else if errors.As(err, &dnsErr) && dnsErr.IsTimeout {
			status = "timeout"
		}
		fmt.Printf("%s %.3f\n", status, took)
		fmt.Fprintln(os.Stderr, err)
		return
	}
	fmt.Printf("ok %.3f %s\n", took, strings.Join(addrs, " "))
}
