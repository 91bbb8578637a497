// Command etcd is etcd's own server entry point, built from the pinned
// go.etcd.io/etcd/server/v3 module. etcd's module has replace directives that
// Go ignores when it is a dependency, so `go install` of its cmd is refused;
// this tiny main is the supported way round that.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
