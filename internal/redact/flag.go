package redact

import "flag"

// StringVar defines a string flag holding a URI, as flag.StringVar does,
// whose default is shown by -h (and by a pflag set that adopts fs)
// through [URI]: a default taken from the environment keeps its
// credentials out of the help.
func StringVar(fs *flag.FlagSet, p *string, name, value, usage string) {
	*p = value
	fs.Var(&uriValue{p}, name, usage)
}

type uriValue struct{ p *string }

func (v *uriValue) String() string {
	if v == nil || v.p == nil {
		return ""
	}
	return URI(*v.p)
}

func (v *uriValue) Set(s string) error { *v.p = s; return nil }
